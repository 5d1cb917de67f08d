"""The released module path: ``from pacifica.downloader.cloudevent import CloudEvent`` keeps working.

New code imports from :mod:`pacifica.downloader`.
"""

from ._compat import CloudEvent

__all__ = ["CloudEvent"]
