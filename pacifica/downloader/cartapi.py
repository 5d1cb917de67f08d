"""The released module path: ``from pacifica.downloader.cartapi import CartAPI`` keeps working.

New code imports from :mod:`pacifica.downloader`.
"""

from ._compat import CartAPI

__all__ = ["CartAPI"]
