"""The benchmark events: their files, generated on the fly, archived, and checked once downloaded.

An :class:`EventSpec` says how many files of what size an event has; from it
:func:`make_event` derives deterministic contents (a seeded PRNG, so no two
files hash alike and nothing has to be kept in memory), uploads each file to
the stack's archive interface and returns the Pacifica Notifications
CloudEvent naming them.  :func:`verify_download` checks a downloaded tree
against that event: exactly the requested files, each with its hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["KIB", "MIB", "Event", "EventSpec", "archived", "file_content", "make_event", "verify_download"]

KIB = 1024
MIB = 1024 * KIB
#: Files per folder inside an event, so that the tree looks like a real ingest.
FILES_PER_FOLDER = 100
#: The hash algorithm of every record (Pacifica's usual choice).
HASHTYPE = "sha1"

# Every request goes to loopback: never through a proxy.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class EventSpec:
    """An event to benchmark: ``count`` files of ``size`` bytes, timed ``runs`` times."""

    key: str
    label: str
    count: int
    size: int
    runs: int

    @property
    def total_bytes(self) -> int:
        """The event's payload in bytes."""
        return self.count * self.size


@dataclass(frozen=True)
class Event:
    """An archived event: its spec and its CloudEvent."""

    spec: EventSpec
    cloudevent: dict[str, Any]

    @property
    def files(self) -> list[dict[str, Any]]:
        """The event's ``Files`` metadata objects."""
        return [obj for obj in self.cloudevent["data"] if obj.get("destinationTable") == "Files"]

    @property
    def paths(self) -> list[str]:
        """The relative path of each file, ``subdir/name``."""
        return [f"{obj['subdir']}/{obj['name']}" for obj in self.files]

    def cart_body(self, paths: Iterable[str] | None = None) -> bytes:
        """The JSON body of a Cartd POST asking for the files at ``paths`` (default: every file of the event)."""
        wanted = None if paths is None else set(paths)
        fileids = [
            {
                "id": obj["_id"],
                "path": f"{obj['subdir']}/{obj['name']}",
                "hashtype": obj["hashtype"],
                "hashsum": obj["hashsum"],
            }
            for obj in self.files
            if wanted is None or f"{obj['subdir']}/{obj['name']}" in wanted
        ]
        return json.dumps({"fileids": fileids}).encode()

    def write(self, path: Path) -> Path:
        """Write the CloudEvent as JSON to ``path`` (for the client subprocesses); return ``path``."""
        path.write_text(json.dumps(self.cloudevent))
        return path


def file_content(file_id: int, size: int) -> bytes:
    """The bytes of archive file ``file_id``: ``size`` pseudo-random bytes seeded by the id."""
    return random.Random(file_id).randbytes(size)


def _layout(spec: EventSpec, first_id: int) -> Iterator[tuple[int, str, str]]:
    """Yield ``(archive id, subdir, name)`` for each file of the event; subdirs have no trailing slash."""
    for index in range(spec.count):
        yield first_id + index, f"{spec.key}/d{index // FILES_PER_FOLDER:03d}", f"f{index:05d}.bin"


def archived(archive_url: str, file_id: int) -> bool:
    """Whether the archive interface holds a file under ``file_id``."""
    request = urllib.request.Request(f"{archive_url}/{file_id}", method="HEAD")
    try:
        with _HTTP.open(request, timeout=30.0) as response:
            return bool(response.status == 204 or response.status == 200)
    except urllib.error.HTTPError:
        return False


def make_event(spec: EventSpec, first_id: int, put_file: Callable[[int, bytes], None], archive_url: str) -> Event:
    """Build the event's CloudEvent; archive its files with ``put_file`` unless already archived.

    Files go one request at a time: the archive interface serves a single
    request thread (see ``tests/support/cartd_stack.py``).  Its first and last ids
    are checked, so a stack restarted on the same work directory (whose
    archive is kept) is not loaded again.
    """
    present = archived(archive_url, first_id) and archived(archive_url, first_id + spec.count - 1)
    data: list[dict[str, Any]] = [{"destinationTable": "Transactions._id", "value": first_id}]
    for file_id, subdir, name in _layout(spec, first_id):
        content = file_content(file_id, spec.size)
        if not present:
            put_file(file_id, content)
        data.append(
            {
                "destinationTable": "Files",
                "_id": file_id,
                "name": name,
                "subdir": subdir,
                "hashtype": HASHTYPE,
                "hashsum": hashlib.new(HASHTYPE, content).hexdigest(),
                "size": spec.size,
            }
        )
    cloudevent = {
        "specversion": "1.0",
        "id": f"bench-{spec.key}-{first_id}",
        "type": "org.pacifica.metadata.ingest",
        "source": "/pacifica/metadata/ingest",
        "datacontenttype": "application/json",
        "data": data,
    }
    return Event(spec=spec, cloudevent=cloudevent)


def _digest(path: Path, hashtype: str) -> str:
    digest = hashlib.new(hashtype)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_download(event: Event, folder: Path) -> list[str]:
    """Check ``folder`` holds exactly the event's files with their hashes; return the problems found.

    ``folder`` is where the tar's top folder (``data``) lands; hidden work
    folders a client leaves empty are ignored, any file is not.
    """
    expected = {f"{obj['subdir']}/{obj['name']}": obj for obj in event.files}
    found: set[str] = set()
    for directory, _subdirs, names in os.walk(folder):
        for name in names:
            found.add(os.path.relpath(os.path.join(directory, name), folder).replace(os.sep, "/"))
    problems = [f"missing {path}" for path in sorted(set(expected) - found)][:5]
    problems += [f"unexpected {path}" for path in sorted(found - set(expected))][:5]
    for path, obj in expected.items():
        if path in found and _digest(folder / path, obj["hashtype"]) != obj["hashsum"]:
            problems.append(f"wrong content in {path}")
            if len(problems) > 10:
                break
    return problems
