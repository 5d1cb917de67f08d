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

LOGGER = logging.getLogger(__name__)

INDEX_NAME = "verified.sqlite3"
#: Seconds a lookup or update waits for another process's lock on the index before the index is turned off:
#: long enough for other downloads' short writes, short next to hashing the files again.
BUSY_TIMEOUT = 2.0
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

    Paths are stored relative to the download directory.  The index only
    ever saves work, it never decides that a file is right on its own, so it
    must never fail a download: the first SQLite error (a lock another
    process holds past :data:`BUSY_TIMEOUT`, a file system without working
    locks) turns the index off for the rest of the download, and existing
    files are hashed instead.  An index that is not a database, or is
    damaged (a half-written copy on shared storage), is moved aside as
    ``verified.sqlite3.damaged`` and a new one begun.
    """

    def __init__(self, folder: Path) -> None:
        """Use (creating when needed) the index in ``folder``, the download directory's checked hidden folder."""
        self.path = folder / INDEX_NAME
        self._db: Any = None
        self._lock = threading.Lock()  # one connection, used by the threads of a pipelined download
        if sqlite3 is None:
            return
        for attempt in range(2):  # a damaged index is moved aside once, and a new one opened in its place
            try:
                self._db = self._open()
                return
            except (sqlite3.Error, OSError) as err:
                if attempt == 0 and self._set_aside_if_damaged(err):
                    continue
                self._give_up(err, set_aside=False)
                return

    def _open(self) -> Any:
        db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA synchronous = OFF")  # a lost update only costs hashing that file again
            db.execute(_SCHEMA)
            db.execute("SELECT count(*) FROM (SELECT 1 FROM verified LIMIT 1)").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _set_aside_if_damaged(self, err: BaseException) -> bool:
        """Move a damaged index aside (True), or say it is not damaged but unusable (False)."""
        # Exactly DatabaseError: SQLITE_NOTADB or SQLITE_CORRUPT; its subclasses (OperationalError: locked,
        # busy, I/O) are states of the moment, and the index is left as it is.
        if sqlite3 is None or type(err) is not sqlite3.DatabaseError:
            return False
        LOGGER.warning(
            "the verified-file index %s is damaged (%s); moved aside, existing files are hashed again", self.path, err
        )
        try:
            os.replace(self.path, self.path.with_name(INDEX_NAME + ".damaged"))
        except OSError as moving:
            LOGGER.debug("could not move %s aside: %s", self.path, moving)
            return False
        return True

    def _give_up(self, err: BaseException, set_aside: bool = True) -> None:
        """Turn the index off for this download, moving it aside if it is damaged (lock held or not yet made)."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None
        if not (set_aside and self._set_aside_if_damaged(err)):
            LOGGER.info("verified-file index %s unusable (%s); existing files are hashed instead", self.path, err)

    def is_verified(self, relative: str, final: Path, hashtype: str, hashsum: str) -> bool:
        """True if ``final`` was verified with this hash and has not changed since."""
        if self._db is None:
            return False
        try:
            info = os.lstat(final)
        except OSError:
            return False
        with self._lock:
            if self._db is None:
                return False
            try:
                row = self._db.execute(_LOOKUP, (relative,)).fetchone()
            except sqlite3.Error as err:
                self._give_up(err)
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
        with self._lock:
            if self._db is None:
                return
            try:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany("INSERT OR REPLACE INTO verified VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            except sqlite3.Error as err:
                self._give_up(err)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None
