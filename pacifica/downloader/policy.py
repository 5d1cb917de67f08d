"""Turn a Pacifica Policy "transaction info" document into the files to download.

The Policy service answers ``/transactioninfo/<id>`` with a document whose
``files`` member maps each file id to its metadata
(``{"files": {"103": {"_id": 103, "name": ..., "subdir": ..., "hashtype": ...,
"hashsum": ...}}}``).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

from .exceptions import InvalidInputError
from .records import FileRecord, Keyed, entries_callable, validate_records

__all__ = ["TransactionInfo", "transaction_records"]


def transaction_records(transinfo: Any) -> list[FileRecord]:
    """Return the checked file records of a transaction-info document, in document order.

    Raises :class:`InvalidInputError` listing every bad file entry.
    """
    if not isinstance(transinfo, dict):
        raise InvalidInputError(
            f"a transaction-info document must be a JSON object (dict), not {type(transinfo).__name__}"
        )
    files = transinfo.get("files", {})
    if not isinstance(files, dict):
        raise InvalidInputError("the document's 'files' must map file ids to file metadata")
    return validate_records(
        ((f"files[{key!r}]", Keyed(obj, key)) for key, obj in files.items()),
        what="transaction's files",
    )


class TransactionInfo:
    """Reads the files of a Pacifica Policy transaction-info document.

    >>> TransactionInfo.transactioninfo({"files": {}})()   # doctest: +ELLIPSIS
    <generator object ...>
    """

    @staticmethod
    def transactioninfo(transinfo: Any) -> Callable[[], Iterator[dict[str, str]]]:
        """Return a callable yielding the document's files as Cartd ``fileids`` entries.

        The document is checked at once; a bad entry raises
        :class:`InvalidInputError` before any cart is made.
        """
        return entries_callable(transaction_records(transinfo))

    #: The name the released 0.x versions used.
    yield_files = transactioninfo
