"""Turn a Pacifica Policy "transaction info" document into the files to download.

The Policy service answers ``GET /status/transactions/by_id/<id>`` (relaying
Metadata's ``/transactioninfo/by_id/<id>``) with a document whose ``files``
member maps each file id to its metadata (``{"files": {"103": {"_id": 103,
"name": ..., "subdir": ..., "hashtype": ..., "hashsum": ...}}}``).  It
answers an unknown transaction with HTTP 200 too, and Metadata's error
document (``{"status": "404 Not Found", "message": ...}``, no ``files``):
:func:`transaction_records` raises :class:`PolicyError` for that, so that an
unknown transaction is never an empty download.
"""

from __future__ import annotations

from typing import Any

from ._exceptions import InvalidInputError, PolicyError
from ._records import FileRecord, Keyed, validate_records
from ._redaction import quote_known

#: The ``status`` values of a document that is not an error (Policy's own answers say "success").
_SUCCESS = ("success", "ok")


def document_error(transinfo: dict[str, Any]) -> str | None:
    """What the service said, if ``transinfo`` is an error document rather than a transaction's; else None.

    An error document has a ``status`` that is not a success (Metadata's
    ``"404 Not Found"``, CherryPy's ``"500 Internal Server Error"``), or no
    ``files`` member at all.

    >>> document_error({"status": "404 Not Found", "message": "No Transaction with an ID of 9 was found"})
    '404 Not Found: No Transaction with an ID of 9 was found'
    >>> document_error({"files": {}}) is None
    True
    """
    status = transinfo.get("status")
    failed = status is not None and not (
        isinstance(status, str) and (status.strip().lower() in _SUCCESS or status.strip().startswith("2"))
    )
    if not failed and "files" in transinfo:
        return None
    said = [str(part) for part in (status, transinfo.get("message")) if part not in (None, "")]
    if not said:
        return "a document without 'files' (keys: {})".format(", ".join(sorted(map(str, transinfo))[:10]) or "none")
    return quote_known(": ".join(said))


def transaction_records(transinfo: Any, transaction_id: int | str | None = None) -> list[FileRecord]:
    """Return the checked file records of a transaction-info document, in document order.

    Raises :class:`PolicyError` when the document is an error (see
    :func:`document_error`; ``transaction_id``, when known, is named in the
    message), and :class:`InvalidInputError` listing every bad file entry.
    A document whose ``files`` is empty gives an empty list.
    """
    if not isinstance(transinfo, dict):
        raise InvalidInputError(
            f"a transaction-info document must be a JSON object (dict), not {type(transinfo).__name__}"
        )
    said = document_error(transinfo)
    if said is not None:
        which = "transaction {}".format(
            transaction_id
            if transaction_id is not None
            else transinfo.get("_id", transinfo.get("transaction_id", "(id unknown)"))
        )
        raise PolicyError(
            f"the policy service gave no files for {which}: {said}; check the transaction id, "
            "and that the document is Policy's answer to /status/transactions/by_id/<id>"
        )
    files = transinfo["files"]
    if not isinstance(files, dict):
        raise InvalidInputError("the document's 'files' must map file ids to file metadata")
    return validate_records(
        ((f"files[{key!r}]", Keyed(obj, key)) for key, obj in files.items()), what="transaction's files"
    )
