"""Split a large download into carts and overlap their staging with their transfers.

Cartd stages a cart's files one task at a time and, after each file, re-reads
all of the cart's file rows: its cost per file grows with the cart's size.
A large event is therefore cut into several carts (:func:`split_batches`),
and :func:`run_carts` runs them so that the server is never idle: at most
``max_staging`` carts are staging at once, the next one is created as soon
as one becomes ready, and each ready cart is downloaded, verified and deleted
while the next ones stage.  When one cart fails, the others are cancelled
and deleted, and the first error is raised.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from .records import FileRecord

__all__ = ["TAIL_SHARE", "Cancelled", "CartLimits", "Slots", "run_carts", "split_batches"]

LOGGER = logging.getLogger(__name__)


class Cancelled(Exception):
    """Internal: another cart of the same download failed, or the caller interrupted it."""


@dataclass(frozen=True)
class CartLimits:
    """How a download is cut into carts, and how many stage at once.

    * ``max_files=250``: Cartd's cost per file grows with the cart's size
      (about 55 ms per file at 10 files, 95 ms at 2000); 250 keeps it near
      the floor while the per-cart overhead (a few requests) stays small.
      Measured here on 2000 × 64 KiB: 63 s with 250 or 100, 69 s with 500.
    * ``max_bytes=128 MiB`` (when the event gives sizes): the first cart is
      ready, and its transfer overlaps the others' staging, early on.
      Measured on 200 × 5 MiB: 12–13 s with 128 MiB, 13–14 s with 64 or
      32 MiB (more carts, more gaps), 14–15 s as one cart.
    * ``max_staging=1``: carts staging at once.  One Celery worker stages one
      file at a time, so a second cart would only delay the first; raise it
      to the number of Cartd workers.

    >>> CartLimits().max_files
    250
    >>> Downloader(location, url, limits=CartLimits(max_files=1000, max_staging=2))   # doctest: +SKIP
    """

    max_files: int = 250
    max_bytes: int = 128 * 1024 * 1024
    max_staging: int = 1

    def __post_init__(self) -> None:
        """Refuse limits that cannot make progress."""
        for name in ("max_files", "max_bytes", "max_staging"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CartLimits.{name} must be an integer >= 1, got {value!r}")


#: The last cart of a split download holds at most this share of the limits.
TAIL_SHARE = 8


def split_batches(records: list[FileRecord], limits: CartLimits) -> list[list[FileRecord]]:
    """Cut ``records`` into consecutive batches within ``limits`` (a file larger than max_bytes goes alone).

    When more than one batch is needed, the last one is kept small (at most
    1/8 of ``max_files`` and of ``max_bytes``, and at least one file): the
    transfer and deletion of the last cart are the only part of a download
    that nothing overlaps, so a small last cart makes the end come sooner
    (200 × 5 MiB: 12.4–12.7 s instead of 12.9–14.6 s).
    """
    batches = _cut(records, limits.max_files, limits.max_bytes)
    if len(batches) < 2:
        return batches
    tail: list[FileRecord] = []
    size = 0
    tail_files, tail_bytes = limits.max_files // TAIL_SHARE, limits.max_bytes // TAIL_SHARE
    for record in reversed(records):
        record_size = record.size or 0
        if tail and (len(tail) >= tail_files or size + record_size > tail_bytes):
            break
        tail.append(record)
        size += record_size
    tail.reverse()
    return _cut(records[: len(records) - len(tail)], limits.max_files, limits.max_bytes) + [tail]


def _cut(records: list[FileRecord], max_files: int, max_bytes: int) -> list[list[FileRecord]]:
    """Consecutive batches of at most ``max_files`` files and ``max_bytes`` bytes (a larger file goes alone)."""
    batches: list[list[FileRecord]] = []
    current: list[FileRecord] = []
    size = 0
    for record in records:
        record_size = record.size or 0
        if current and (len(current) >= max_files or size + record_size > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(record)
        size += record_size
    if current:
        batches.append(current)
    return batches


class Slots:
    """Staging slots shared by the carts of one download, handed out in batch order, and the cancel flag.

    Cart ``turn`` gets a slot only after every cart before it got one, so
    the carts stage in the order :func:`split_batches` made them and the
    small last cart really comes last (with a plain semaphore, whichever
    waiting thread woke first went next).
    """

    def __init__(self, max_staging: int) -> None:
        """Allow ``max_staging`` carts to stage at once."""
        self._free = max_staging
        self._next_turn = 0
        self._changed = threading.Condition()
        self.cancelled = threading.Event()

    def check(self) -> None:
        """Raise :class:`Cancelled` once the download is being abandoned."""
        if self.cancelled.is_set():
            raise Cancelled("another cart of this download failed")

    @contextmanager
    def staging(self, turn: int = 0) -> Iterator[None]:
        """Hold a staging slot for the ``with`` block (from the POST until the cart is ready).

        ``turn`` is the cart's position in the download (0 first); the slot
        waits for every earlier turn.
        """
        with self._changed:
            self.check()
            while not (self._free and self._next_turn == turn):
                self._changed.wait(0.1)
                self.check()
            self._free -= 1
            self._next_turn += 1
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._free += 1
                self._changed.notify_all()


def run_carts(
    batches: list[list[FileRecord]],
    fetch: Callable[[list[FileRecord], Slots, int], None],
    max_staging: int,
) -> None:
    """Run ``fetch(batch, slots, turn)`` for every batch, overlapping staging and transfers.

    ``fetch`` holds ``slots.staging(turn)`` while its cart stages and calls
    ``slots.check()`` often.  A single batch runs in the calling thread.
    On the first failure (or a KeyboardInterrupt) every other cart is
    cancelled, waited for (so each deletes its cart), and the error raised.
    """
    slots = Slots(max_staging)
    if len(batches) == 1:
        fetch(batches[0], slots, 0)
        return
    workers = min(len(batches), max_staging + 2)  # room for transfers while others stage
    LOGGER.info("download split into %d carts, %d staging at once", len(batches), max_staging)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pacifica-cart")
    futures: list[Future[None]] = [
        pool.submit(fetch, batch, slots, turn) for turn, batch in enumerate(batches)
    ]
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    except BaseException:
        slots.cancelled.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    failed = [future for future in done if future.exception() is not None]
    if failed:
        slots.cancelled.set()
    pool.shutdown(wait=True, cancel_futures=True)
    errors = [
        error
        for future in futures
        if future.done() and not future.cancelled()
        for error in [future.exception()]
        if error is not None and not isinstance(error, Cancelled)
    ]
    if errors:
        raise errors[0]
