"""Remember which files on disk were verified, so a re-run need not hash them again.

Re-running a download must not fetch files that are already right, and
proving a 1 GB file right by hashing it takes seconds.  Like ``git`` and
``rsync``, a :class:`VerifiedIndex` records, for each file it saw verified,
the hash it matched and the file's size, inode, modification and change
times.  When all of those are unchanged the content is unchanged (any write,
``touch`` or rename changes the change time, which no user can set), so the
file counts as verified without being read.  Anything else — no entry, any
difference, an unreadable index — falls back to hashing the file.

The index is an SQLite file in the download directory's hidden folder; it is
safe for concurrent downloads and its size grows with the number of files,
not with their bytes.  Without the ``sqlite3`` module it does nothing.
"""
from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    import sqlite3
except ImportError:  # pragma: no cover - Pythons built without sqlite
    sqlite3 = None  # type: ignore[assignment]

__all__ = ["INDEX_NAME", "VerifiedIndex"]

LOGGER = logging.getLogger(__name__)

INDEX_NAME = "verified.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS verified (
    path TEXT PRIMARY KEY,
    hashtype TEXT NOT NULL,
    hashsum TEXT NOT NULL,
    size INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL
)
"""


_LOOKUP = "SELECT hashtype, hashsum, size, inode, mtime_ns, ctime_ns FROM verified WHERE path = ?"


def _signature(info: os.stat_result) -> tuple[int, int, int, int]:
    return info.st_size, info.st_ino, info.st_mtime_ns, info.st_ctime_ns


class VerifiedIndex:
    """The files of one download directory known to hold verified content.

    Paths are stored relative to the download directory.  Every method
    swallows SQLite errors (logged at DEBUG): the index only ever saves
    work, it never decides that a file is right on its own.
    """

    def __init__(self, folder: Path) -> None:
        """Use (creating when needed) the index in ``folder``, the download directory's checked hidden folder."""
        self.path = folder / INDEX_NAME
        self._db: Any = None
        self._lock = threading.Lock()  # one connection, used by the threads of a pipelined download
        if sqlite3 is None:
            return
        try:
            self._db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA synchronous = OFF")  # a lost update only costs hashing that file again
            self._db.execute(_SCHEMA)
        except (sqlite3.Error, OSError) as err:
            LOGGER.debug("verified-file index unavailable (%s); existing files will be hashed", err)
            self._db = None

    def is_verified(self, relative: str, final: Path, hashtype: str, hashsum: str) -> bool:
        """True if ``final`` was verified with this hash and has not changed since."""
        if self._db is None:
            return False
        try:
            info = os.lstat(final)
            with self._lock:
                row = self._db.execute(_LOOKUP, (relative,)).fetchone()
        except (sqlite3.Error, OSError) as err:
            LOGGER.debug("verified-file index lookup failed: %s", err)
            return False
        if row is None or not stat.S_ISREG(info.st_mode):
            return False
        return (row[0], row[1]) == (hashtype, hashsum) and tuple(row[2:]) == _signature(info)

    def remember(self, entries: Sequence[tuple[str, str | Path, str, str]]) -> None:
        """Record ``(relative, final, hashtype, hashsum)`` for files just verified, as they are on disk now."""
        if self._db is None or not entries:
            return
        rows = []
        for relative, final, hashtype, hashsum in entries:
            with contextlib.suppress(OSError):
                rows.append((relative, hashtype, hashsum, *_signature(os.lstat(final))))
        try:
            with self._lock, self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR REPLACE INTO verified VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as err:
            LOGGER.debug("verified-file index update failed: %s", err)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None
