"""The one event builder of the tests: Pacifica ``Files`` objects, Notifications events, archived or not."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["archive", "event_for", "event_with", "files_object", "fresh_id", "make_event"]

#: Archive ids for the stack's archive, unique within a test session (each test archives under new ids).
_IDS = itertools.count(random.randrange(10**6, 10**9, 10**4))


def fresh_id() -> int:
    """An archive id no other test of the session uses."""
    return next(_IDS)


def files_object(file_id: int | str, path: str, data: bytes, hashtype: str = "sha1") -> dict[str, Any]:
    """The Pacifica ``Files`` metadata object of ``data`` at ``path`` ("sub/dir/name")."""
    subdir, _, name = path.rpartition("/")
    return {
        "destinationTable": "Files",
        "_id": file_id,
        "name": name,
        "subdir": subdir,
        "hashtype": hashtype,
        "hashsum": hashlib.new(hashtype, data).hexdigest(),
        "size": len(data),
        "mimetype": "application/octet-stream",
    }


def event_with(objects: Iterable[Mapping[str, Any]], event_id: str | None = None, spec: str = "0.1") -> dict[str, Any]:
    """A Notifications-shaped CloudEvent whose data are a transaction's records and ``objects``.

    ``spec`` "0.1" is what Notifications sends; "1.0" is the structured form of CloudEvents 1.0.
    """
    data = [
        {"destinationTable": "Transactions._id", "value": fresh_id()},
        {"destinationTable": "TransactionKeyValue", "key": "Tag", "value": "test"},
        *(dict(obj) for obj in objects),
    ]
    name = event_id or f"test-{fresh_id()}"
    if spec == "1.0":
        return {
            "specversion": "1.0",
            "id": name,
            "source": "/pacifica/metadata/ingest",
            "type": "org.pacifica.metadata.ingest",
            "data": data,
        }
    return {
        "cloudEventsVersion": "0.1",
        "eventType": "org.pacifica.metadata.ingest",
        "eventID": name,
        "source": "/pacifica/metadata/ingest",
        "contentType": "application/json",
        "data": data,
    }


def event_for(files: Mapping[str, bytes], first_id: int = 1, hashtype: str = "sha1") -> dict[str, Any]:
    """An event asking for ``files`` ({"sub/dir/name": bytes}) under ids ``first_id``, ``first_id + 1``, ..."""
    return event_with(
        files_object(number, path, data, hashtype) for number, (path, data) in enumerate(files.items(), first_id)
    )


def archive(stack: Any, files: Mapping[str, bytes], hashtype: str = "sha1") -> list[dict[str, Any]]:
    """Store ``files`` in the stack's archive under fresh ids; return their ``Files`` objects, in order."""
    objects = []
    for path, data in files.items():
        file_id = fresh_id()
        stack.put_file(file_id, data)
        objects.append(files_object(file_id, path, data, hashtype))
    return objects


def make_event(stack: Any, files: Mapping[str, bytes], hashtype: str = "sha1") -> dict[str, Any]:
    """Archive ``files`` under fresh ids; return the Notifications event announcing them."""
    return event_with(archive(stack, files, hashtype))
