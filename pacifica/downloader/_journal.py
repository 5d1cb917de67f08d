"""The events the download service received, each recorded durably before it is answered.

An :class:`EventJournal` lives in the download area's hidden folder
(``DIR/.pacifica-downloader/events/``), one JSON file per event, in one of
three folders that say where the event stands:

``received/``
    recorded, not yet queued for the download workers (the broker was down,
    or the service was killed before it could queue it);
``queued/``
    handed to the broker, with the task's id;
``rejected/``
    cannot be downloaded (not an event, no files, a bad record), with the
    reason.

Each file is written to a temporary name, flushed to the disk (``fsync``),
renamed into place and its folder flushed too: once :meth:`EventJournal.add`
returns, the record survives a crash or a power cut, and no half-written
record ever has a final name.  Moving an event from ``received/`` to
``queued/`` writes the new record first and removes the old one after, so a
crash in between leaves both, which :meth:`EventJournal.pending` resolves
(the event was queued).  An event's key is unique across the three folders:
the same event delivered twice is recorded once.

One service per journal: :meth:`EventJournal.hold` takes an exclusive lock
(``events/service.lock``) for the life of the service.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from ._exceptions import DestinationError, os_error
from ._incoming import hidden_folder

LOGGER = logging.getLogger(__name__)

RECEIVED = "received"
QUEUED = "queued"
REJECTED = "rejected"
#: Where a recorded event can stand, in the order of its life.
STATES = (RECEIVED, QUEUED, REJECTED)
_SUFFIX = ".json"


@dataclass(frozen=True)
class EventRecord:
    """One event as the service recorded it.

    ``key`` names the record (and, for an event that can be downloaded, the
    folder its files land in); ``event`` is the event as received (``None``
    when the request held no event at all); ``reason`` says why a rejected
    event cannot be downloaded; ``task`` is the download task's id once
    queued; ``received`` is when it arrived (ISO 8601, UTC).
    """

    key: str
    state: str
    received: str
    event: Any = None
    folder: str | None = None
    reason: str | None = None
    task: str | None = None
    #: a digest of the event's data: the same id with other content is not a duplicate but a conflict
    data_digest: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready values."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> EventRecord:
        """A record read back from its file."""
        known = {name: value[name] for name in cls.__dataclass_fields__ if name in value}
        return cls(**known)


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _age(path: Path) -> tuple[int, str]:
    try:
        return path.stat().st_mtime_ns, path.name
    except OSError:  # gone meanwhile: read as missing below
        return 0, path.name


class EventJournal:
    """The durable records of the events received for the download area ``location`` (see the module)."""

    def __init__(self, location: str | os.PathLike[str]) -> None:
        """Open (creating when needed) the journal of ``location``'s hidden folder."""
        self.location = Path(location)
        try:
            self.location.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise os_error(err, str(self.location), "create the download directory") from err
        self.root = hidden_folder(self.location) / "events"
        try:
            for state in STATES:
                (self.root / state).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise os_error(err, str(self.root), "create the events journal") from err
        self._lock = threading.Lock()
        self._holder: IO[str] | None = None

    # -- one service per journal ---------------------------------------------------------

    def hold(self) -> None:
        """Take the journal for this process; raise :class:`DestinationError` if another service has it."""
        handle = open(self.root / "service.lock", "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise DestinationError(
                f"another download service is already recording events in {self.root}; stop it, or give this "
                "one another download directory",
                path=str(self.root),
            ) from None
        self._holder = handle

    def release(self) -> None:
        """Let another service take the journal."""
        if self._holder is not None:
            self._holder.close()
            self._holder = None

    # -- records ---------------------------------------------------------------------------

    def _path(self, state: str, key: str) -> Path:
        return self.root / state / (key + _SUFFIX)

    def _write(self, record: EventRecord) -> None:
        """Write ``record`` under its state's folder: a temporary name, fsync, rename, fsync of the folder."""
        final = self._path(record.state, record.key)
        temporary = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(record.to_json(), handle, ensure_ascii=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
            _fsync_folder(final.parent)
        except OSError as err:
            temporary.unlink(missing_ok=True)
            raise os_error(err, str(final), "record the event") from err

    def _read(self, path: Path) -> EventRecord | None:
        try:
            with open(path, encoding="utf-8") as handle:
                return EventRecord.from_json(json.load(handle))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as err:
            LOGGER.error("cannot read the event record %s (%s); left as it is", path, err)
            return None

    def find(self, key: str) -> EventRecord | None:
        """The record of ``key`` in whichever state it stands, or None."""
        for state in (QUEUED, REJECTED, RECEIVED):  # queued first: after a crash mid-move it is both
            path = self._path(state, key)
            if path.exists():
                return self._read(path)
        return None

    def add(self, record: EventRecord) -> EventRecord | None:
        """Record ``record`` durably unless its key is already recorded; return the existing record, or None."""
        with self._lock:
            existing = self.find(record.key)
            if existing is not None:
                return existing
            self._write(record)
            return None

    def mark_queued(self, record: EventRecord, task: str) -> EventRecord:
        """Record that ``record``'s download was queued as ``task`` (durably), then drop its received record."""
        queued = replace(record, state=QUEUED, task=task)
        with self._lock:
            self._write(queued)
            self._drop(RECEIVED, record.key)
        return queued

    def _drop(self, state: str, key: str) -> None:
        path = self._path(state, key)
        try:
            path.unlink(missing_ok=True)
            _fsync_folder(path.parent)
        except OSError as err:
            LOGGER.warning("could not remove %s (%s); it is ignored, the event being queued", path, err)

    def pending(self) -> Iterator[EventRecord]:
        """The records received and not yet queued, oldest first."""
        paths = sorted(self._entries(RECEIVED), key=_age)
        for path in paths:
            key = path.name[: -len(_SUFFIX)]
            if self._path(QUEUED, key).exists():  # queued before a crash that kept the received record
                with self._lock:
                    self._drop(RECEIVED, key)
                continue
            record = self._read(path)
            if record is not None:
                yield record

    def _entries(self, state: str) -> list[Path]:
        try:
            return [
                entry
                for entry in (self.root / state).iterdir()
                if entry.name.endswith(_SUFFIX) and not entry.name.startswith(".")
            ]
        except OSError as err:
            LOGGER.error("cannot list %s: %s", self.root / state, err)
            return []

    def count(self, state: str) -> int:
        """How many records stand in ``state``."""
        return len(self._entries(state))
