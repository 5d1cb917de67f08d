"""Pacifica Downloader: turn Pacifica events and documents into verified files on disk.

The entry point is :class:`Downloader`::

    from pacifica.downloader import Downloader
    down = Downloader(down_path, "http://127.0.0.1:8081")
    down.cloudevent(cloud_event)      # files land in down_path/data/<subdir>/<name>

:class:`CartAPI`, :class:`CloudEvent` and :class:`TransactionInfo` are the
pieces it is built from; every error derives from :class:`DownloaderError`.
"""

from ._compat import CartAPI, CloudEvent, Downloader, TransactionInfo
from ._config import LostCarts, Timeouts
from ._exceptions import (
    CartError,
    CartFailedError,
    CartNotFoundError,
    CartTimeoutError,
    DestinationError,
    DownloaderError,
    IntegrityError,
    InvalidInputError,
    ManifestError,
    PolicyError,
    TransferError,
    UnsafeArchiveError,
)
from ._progress import Progress
from ._records import FileRecord
from ._retry import Retry, RetryBudget
from ._split import CartLimits

__version__ = "1.0.0"

__all__ = [
    "CartAPI",
    "CartError",
    "CartFailedError",
    "CartLimits",
    "CartNotFoundError",
    "CartTimeoutError",
    "CloudEvent",
    "DestinationError",
    "Downloader",
    "DownloaderError",
    "FileRecord",
    "IntegrityError",
    "InvalidInputError",
    "LostCarts",
    "ManifestError",
    "PolicyError",
    "Progress",
    "Retry",
    "RetryBudget",
    "Timeouts",
    "TransactionInfo",
    "TransferError",
    "UnsafeArchiveError",
]

# The public names are documented, shown and pickled as what users import: pacifica.downloader.X.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
