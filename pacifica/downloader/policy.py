"""The released module path: ``from pacifica.downloader.policy import TransactionInfo`` keeps working.

New code imports from :mod:`pacifica.downloader`.
"""

from ._compat import TransactionInfo

__all__ = ["TransactionInfo"]
