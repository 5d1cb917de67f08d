"""The released module path: ``from pacifica.downloader.downloader import Downloader`` keeps working.

New code imports from :mod:`pacifica.downloader`.
"""

from ._compat import Downloader

__all__ = ["Downloader"]
