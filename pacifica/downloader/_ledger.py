"""The carts a run has created and not yet deleted, written down before each POST, so that none is orphaned.

A run killed with ``kill -9``, or by a power cut, cannot delete its carts;
they would hold disk in Cartd's cart volume until Cartd purges them.  So a
download writes each cart's URL into its own ledger file in the location's
hidden folder (``.pacifica-downloader/carts/run-<host>-<pid>-<id>``) before
the cart's POST, and notes its deletion after the DELETE (a 404 counts).
The file is held under an exclusive ``flock`` while the run lives; the
kernel lets go of it when the process dies, however it dies.

The next run on the same location (:meth:`CartLedger.take_over`) finds the
ledgers nobody holds, and takes over the carts they still list that belong
to its own Cartd: it deletes them before posting anything, and keeps in its
own ledger any it could not delete, so a later run tries again.  Ledgers of
another Cartd are left for a run of that Cartd.

The URLs are written without any ``user:password@`` part (the run deleting
a cart sends the credentials of its own configuration), and the file is
never world-writable.  The file is a list of lines, ``+ URL`` when a cart is about to be created
(synced to disk before the POST) and ``- URL`` once it is deleted
(flushed), appended, so a torn last line (a crash while writing) only loses
that line.  Where ``flock`` is
missing (Windows) nothing is recorded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Callable

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from ._permissions import FOLDER_MODE, open_append
from ._redaction import redact

LOGGER = logging.getLogger(__name__)

#: The ledgers' folder inside the location's hidden folder.
LEDGER_DIR = "carts"

#: The ledger files this process holds: a POSIX lock (what flock becomes on NFS) never conflicts with its
#: own process, so another download of the same process must be told which ledgers are alive.
_HELD: set[str] = set()
_HELD_LOCK = threading.Lock()


class CartLedger:
    """This run's ledger of carts, in ``hidden`` (the location's hidden folder); a base URL per ledger.

    >>> ledger = CartLedger(hidden, "http://127.0.0.1:8081")      # doctest: +SKIP
    >>> ledger.take_over(api.delete_cart)                         # doctest: +SKIP
    >>> ledger.add(url); ...; ledger.remove(url); ledger.close()  # doctest: +SKIP
    """

    def __init__(self, hidden: Path, cart_api_url: str) -> None:
        """Prepare this run's ledger for carts of ``cart_api_url``; the file is made on the first :meth:`add`."""
        self.folder = hidden / LEDGER_DIR
        self.cart_api_url = redact(cart_api_url).rstrip("/")
        host = socket.gethostname().replace("-", "_").replace("/", "_")
        self.path = self.folder / f"run-{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._file: IO[str] | None = None
        self._live: set[str] = set()
        self._lock = threading.Lock()

    # -- this run's carts -------------------------------------------------------------

    def add(self, cart_url: str) -> None:
        """Write down ``cart_url`` before its POST; an error to write is logged, not raised."""
        cart_url = redact(cart_url)
        with self._lock:
            self._live.add(cart_url)
            self._write(f"+ {cart_url}\n")

    def remove(self, cart_url: str) -> None:
        """Note that ``cart_url`` is deleted (or was gone)."""
        cart_url = redact(cart_url)
        with self._lock:
            if cart_url in self._live:
                self._live.discard(cart_url)
                self._write(f"- {cart_url}\n")

    @property
    def live(self) -> set[str]:
        """The carts written down and not yet deleted."""
        with self._lock:
            return set(self._live)

    def close(self) -> None:
        """End the run's ledger: removed when every cart is deleted, else left (unheld) for the next run."""
        with self._lock:
            if self._file is None:
                return
            if not self._live:
                _unlink(self.path)
            try:
                self._file.close()
            except OSError as err:  # a full disk: the lines were flushed already, or the warning was given
                LOGGER.debug("closing the cart ledger %s: %s", self.path, err)
            self._file = None
            with _HELD_LOCK:
                _HELD.discard(str(self.path))

    def _write(self, line: str) -> None:
        if fcntl is None:
            return
        try:
            if self._file is None:
                self.folder.mkdir(mode=FOLDER_MODE, exist_ok=True)
                handle = open_append(self.path)  # held for the run's life
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                with _HELD_LOCK:
                    _HELD.add(str(self.path))
                self._file = handle
            self._file.write(line)
            self._file.flush()
            if line.startswith("+"):
                # Only a cart written down before its POST must survive a power cut. A lost "-" line only
                # makes the next run DELETE a cart that is gone (a 404), and fsync after a large transfer
                # waits for the journal to commit that transfer's data.
                os.fsync(self._file.fileno())
        except OSError as err:
            LOGGER.warning(
                "could not write the cart ledger %s: %s (a killed run may leave this cart behind)", self.path, err
            )

    # -- the carts of runs that died -----------------------------------------------------

    def take_over(self, delete: Callable[[str], bool]) -> int:
        """Delete the carts of this Cartd that runs now dead left behind; return how many were deleted.

        ``delete(url)`` deletes one cart and says whether it is gone (a 404
        counts); a cart it cannot delete now is kept in this run's ledger.
        """
        if fcntl is None or not self.folder.is_dir():
            return 0
        deleted = 0
        for path in sorted(self.folder.glob("run-*")):
            if path == self.path:
                continue
            with _HELD_LOCK:
                if str(path) in _HELD:
                    continue  # another download of this process
            deleted += self._take_over_one(path, delete)
        return deleted

    def _take_over_one(self, path: Path, delete: Callable[[str], bool]) -> int:
        try:
            handle = open(path, "r+", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
        except OSError:
            return 0  # gone meanwhile
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0  # held: that run is alive
            text = handle.read()
            lines = text.split("\n")
            carts = _still_listed(lines[:-1])  # the part after the last newline is empty, or torn by a crash
            if any(not self._ours(url) for url in carts):
                return 0  # a run of another Cartd: leave it for a run of that Cartd
            deleted = 0
            for url in sorted(carts):
                if delete(url):
                    deleted += 1
                else:
                    LOGGER.warning(
                        "could not delete cart %s left by a run that died; a later run tries again", redact(url)
                    )
                    self.add(url)
            if carts:
                LOGGER.warning("deleted %d cart(s) a run that died had left on the server (%s)", deleted, path.name)
            _unlink(path)
            return deleted
        finally:
            handle.close()

    def _ours(self, url: str) -> bool:
        return url.startswith(self.cart_api_url + "/")


def _still_listed(lines: Iterable[str]) -> set[str]:
    carts: set[str] = set()
    for line in lines:
        sign, _, url = line.partition(" ")
        url = redact(url)  # a ledger of an earlier version may hold credentials: the configuration's are used
        if sign == "+" and url.startswith(("http://", "https://")):
            carts.add(url)
        elif sign == "-":
            carts.discard(url)
    return carts


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
