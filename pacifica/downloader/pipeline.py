"""Split a large download into carts and overlap their staging with their transfers.

Cartd stages a cart's files one task at a time and, after each file, re-reads
all of the cart's file rows: its cost per file grows with the cart's size.
A large event is therefore cut into several carts (:func:`split_batches`),
and :func:`run_carts` runs them so that the server is never idle: at most
``max_staging`` carts are staging at once, the next one is created shortly
before one becomes ready (so that Cartd's worker goes straight on to it; see
:class:`Slots`), and each ready cart is downloaded, verified and deleted
while the next ones stage.  When one cart fails, the others are cancelled
and deleted, and the first error is raised.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from .cart import Cancelled
from .records import FileRecord

__all__ = ["EDGE_SHARE", "Cancelled", "CartLimits", "Slots", "run_carts", "split_batches"]

LOGGER = logging.getLogger(__name__)


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
      to the number of Cartd workers.  The next cart is still created while
      the one staging finishes (its second half), so the worker never waits
      for the client between carts.

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


#: How long a ready cart's transfer waits for the next cart's POST (see Slots.wait_for_next_cart).
NEXT_CART_WAIT = 2.0
#: A downloaded cart is deleted this long after the next cart's POST, plus SAFE_PER_FILE per file
#: of that cart, or when that cart is ready if sooner (see Slots.delete_between_carts): about five
#: times what Cartd's get_files_locally took on SQLite.
SAFE_AFTER = 1.0
SAFE_PER_FILE = 0.01
#: A cart that has staged this share of the time the last cart took (per file) lets the next one be created.
#: Early costs the server nothing (the worker only stays busy); late leaves it idle.
PREPOST_SHARE = 0.5
#: The first and the last cart of a split download hold at most this share of the limits.
EDGE_SHARE = 8


def split_batches(records: list[FileRecord], limits: CartLimits) -> list[list[FileRecord]]:
    """Cut ``records`` into consecutive batches within ``limits`` (a file larger than max_bytes goes alone).

    When more than one batch is needed, the carts at both ends are kept
    small, because there nothing overlaps the server's staging:

    * the first cart holds at most 1/``EDGE_SHARE`` of ``max_files`` and of
      ``max_bytes`` (and at least one file): until one cart is ready the
      client cannot tell how long this server takes per file, so the second
      cart is only created once the first is ready (see :class:`Slots`), and
      a small first cart is ready, and seen ready, soon;
    * the last cart holds as little: its transfer and deletion come after
      the server has finished;
    * the cart before it holds at most half of ``max_bytes``, so that its
      transfer ends while the last cart stages.

    200 × 5 MiB with the default limits: 3, 23 × 7, 21, 12 and 3 files.
    """
    if _fits(records, limits.max_files, limits.max_bytes) == len(records):
        return [records] if records else []
    edge_files, edge_bytes = limits.max_files // EDGE_SHARE, limits.max_bytes // EDGE_SHARE
    head = records[: _fits(records, edge_files, edge_bytes)]
    rest, tail = _split_end(records[len(head):], edge_files, edge_bytes)
    middle, before_tail = _split_end(rest, limits.max_files, limits.max_bytes // 2)
    ends = [before_tail, tail] if before_tail else [tail]
    return [head] + _even_cut(middle, limits.max_files, limits.max_bytes) + ends


def _split_end(records: list[FileRecord], max_files: int, max_bytes: int) -> tuple[list[FileRecord], list[FileRecord]]:
    """``records`` less its end, and that end: as many last records as fit the limits (at least one, if any)."""
    cut = len(records) - _fits(records[::-1], max_files, max_bytes)
    return records[:cut], records[cut:]


def _fits(records: list[FileRecord], max_files: int, max_bytes: int, start: int = 0) -> int:
    """How many records from ``start`` on fit in ``max_files`` files and ``max_bytes`` bytes (at least one)."""
    count = size = 0
    for record in records[start : start + max(1, max_files)]:  # not islice: it would step over ``start`` records
        size += record.size or 0
        if count and (count >= max_files or size > max_bytes):
            break
        count += 1
    return count


def _even_cut(records: list[FileRecord], max_files: int, max_bytes: int) -> list[list[FileRecord]]:
    """As many batches as :func:`_cut` makes, but of even sizes (no small remainder at the end).

    A cart too short to outlast the server's first task cannot let the next
    cart be created ahead (see :class:`Slots`), so a small cart in the middle
    of a download would cost an idle gap on the server.
    """
    batches = _cut(records, max_files, max_bytes)
    if len(batches) < 2:
        return batches
    count = len(batches)
    total = sum(record.size or 0 for record in records)
    largest = max(record.size or 0 for record in records)
    even = _cut(records, min(max_files, -(-len(records) // count)), min(max_bytes, total // count + largest))
    return even if len(even) <= count else batches


def _cut(records: list[FileRecord], max_files: int, max_bytes: int) -> list[list[FileRecord]]:
    """Consecutive batches of at most ``max_files`` files and ``max_bytes`` bytes (a larger file goes alone)."""
    batches: list[list[FileRecord]] = []
    start = 0
    while start < len(records):
        end = start + _fits(records, max_files, max_bytes, start)
        batches.append(records[start:end])
        start = end
    return batches


@dataclass
class _Deletion:
    """A downloaded cart's DELETE, waiting for a moment when it cannot hurt the cart that stages."""

    run: Callable[[], None]
    taken: bool = False


class Slots:
    """Staging slots shared by the carts of one download, handed out in batch order, and the cancel flag.

    Cart ``turn`` gets a slot only after every cart before it got one, so
    the carts stage in the order :func:`split_batches` made them and the
    small first and last carts really come first and last (with a plain
    semaphore, whichever waiting thread woke first went next).

    **Posting ahead.**  Cartd's Celery worker runs its tasks in the order
    they were queued, and a cart's tasks come in three waves (stage, status,
    pull; each file's task queues the next one).  Once the cart that stages
    is in its last wave, a new cart's tasks queue behind all of its own, so
    the new cart can be created then without delaying it, and the worker
    goes straight on to it instead of idling while the client sees the
    first cart ready and creates the next (one poll and one POST, 60 ms to
    0.4 s per cart on the test stack).  Created a little earlier, its first
    tasks run among the last ones of the cart that stages: that cart is
    ready a little later, but the worker never idles.  Created too late,
    the worker idles.  So a cart that has staged for ``PREPOST_SHARE`` of
    the time the last cart took, per file, stops holding its slot: on the
    test stack the last wave starts at 40–60% of a cart's time, and a time
    per file measured on the small first cart is up to 1.7 times too long
    (it holds the cart's fixed costs and the last poll's delay).  Until a
    cart's time is known (the first cart) it holds its slot until it is
    ready.

    The slots also time the requests that change the server's database
    around the carts that stage (:meth:`wait_for_next_cart`,
    :meth:`delete_between_carts`): on SQLite, Cartd's default database, a
    request that writes while a cart's ``get_files_locally`` task runs makes
    that task fail at once with "database is locked", and the cart stays
    "staging" for ever.  That task starts every cart: it writes a row per
    file while it iterates over a query, which SQLite cannot let wait
    (0.44–0.56 s for 250 files on the test stack).  It runs once the cart
    is created and every cart before it is ready (a cart posted ahead waits
    in the queue), and lasts at most ``SAFE_AFTER`` + ``SAFE_PER_FILE`` per
    file from then.
    """

    def __init__(
        self, max_staging: int, sizes: Sequence[int] = (1,), cancelled: threading.Event | None = None
    ) -> None:
        """Allow ``max_staging`` carts to stage at once; ``sizes`` are the files of each cart, in order.

        ``cancelled`` is the download's flag (set here when a cart fails), which its carts check.
        """
        self._max = max_staging
        self._sizes = list(sizes)
        self._next_turn = 0
        self._staging: dict[int, float | None] = {}  # turn -> when its POST returned (None: not yet)
        self._ended: dict[int, float] = {}  # turn -> when its staging ended (ready, or failed)
        self._ended_prefix = 0  # turns 0 .. _ended_prefix - 1 have all ended ...
        self._ended_prefix_at = 0.0  # ... the last of them at this moment
        self._per_file: float | None = None  # seconds the last ready cart took per file
        self._created = 0
        self._deletions: list[_Deletion] = []
        self._deleting = 0
        self._changed = threading.Condition()
        self.cancelled = cancelled if cancelled is not None else threading.Event()

    def check(self) -> None:
        """Raise :class:`Cancelled` once the download is being abandoned."""
        if self.cancelled.is_set():
            raise Cancelled("another cart of this download failed")

    @contextmanager
    def staging(self, turn: int = 0) -> Iterator[None]:
        """Hold a staging slot for the ``with`` block (from the POST until the cart is ready).

        ``turn`` is the cart's position in the download (0 first); the slot
        waits for every earlier turn, for a free slot (see "posting ahead"
        above), and for a DELETE in progress.
        """
        with self._changed:
            self.check()
            while not (self._next_turn == turn and not self._deleting and self._has_room()):
                self._changed.wait(0.1)
                self.check()
            self._staging[turn] = None
            self._next_turn += 1
            self._changed.notify_all()
        ready = False
        try:
            yield
            ready = True
        finally:
            with self._changed:
                self._end(turn, ready)
                # No other cart stages: the deletions run now, before the next cart is created.  After
                # the last cart there is none to protect, and their own threads run them while this
                # cart's transfer goes on.
                more = self._next_turn < len(self._sizes)
                pending = self._take_deletions() if more and not self._staging else []
            self._run(pending)

    def _has_room(self) -> bool:
        """Fewer than ``max_staging`` carts stage that are not in their last wave."""
        now = time.monotonic()
        return sum(1 for turn in self._staging if not self._finishing(turn, now)) < self._max

    def _finishing(self, turn: int, now: float) -> bool:
        """Cart ``turn`` is past its first task and, judging by the last cart, in its last wave."""
        began, safe = self._began(turn), self._safe_at(turn)
        if self._per_file is None or began is None or safe is None:
            return False
        return now >= max(began + PREPOST_SHARE * self._per_file * self._sizes[turn], safe)

    def _began(self, turn: int) -> float | None:
        """When Cartd can start on cart ``turn``: once it is created and the cart ``max_staging`` before is ready."""
        posted = self._staging.get(turn)
        if turn < self._max or posted is None:
            return posted
        before = self._ended.get(turn - self._max)
        return None if before is None else max(posted, before)

    def _safe_at(self, turn: int) -> float | None:
        """When cart ``turn``'s first task is surely over (None: not known yet).

        That task starts at the latest once the cart is created and every
        cart before it is ready, and lasts at most ``SAFE_AFTER`` +
        ``SAFE_PER_FILE`` per file.
        """
        posted = self._staging.get(turn)
        if posted is None or self._ended_prefix < turn:
            return None
        return max(posted, self._ended_prefix_at) + SAFE_AFTER + SAFE_PER_FILE * self._sizes[turn]

    def _end(self, turn: int, ready: bool) -> None:
        """Cart ``turn`` stopped staging (lock held); learn its time per file when it got ready."""
        now = time.monotonic()
        began = self._began(turn)
        if ready and began is not None:
            self._per_file = (now - began) / max(1, self._sizes[turn])
        del self._staging[turn]
        self._ended[turn] = now
        while self._ended_prefix in self._ended:
            self._ended_prefix_at = max(self._ended_prefix_at, self._ended[self._ended_prefix])
            self._ended_prefix += 1
        self._changed.notify_all()

    def created(self, turn: int = 0) -> None:
        """Note that cart ``turn``'s POST has returned (created or failed)."""
        with self._changed:
            if turn in self._staging:
                self._staging[turn] = time.monotonic()
            self._created += 1
            self._changed.notify_all()

    def wait_to_begin(self, turn: int) -> None:
        """Wait until Cartd can start on cart ``turn`` (a cart posted ahead waits for the one before it).

        Polling it before then would only load the server; and its time per
        file, which times the polls of the carts after it, counts from then.
        """
        with self._changed:
            while self._began(turn) is None:
                self.check()
                self._changed.wait(0.1)

    def expected(self, turn: int) -> float | None:
        """Seconds cart ``turn`` should take to stage once begun, judging by the last cart (None: no cart yet)."""
        with self._changed:
            return None if self._per_file is None else self._per_file * self._sizes[turn]

    def followed(self, turn: int) -> bool:
        """The carts that take cart ``turn``'s place on the server are created: nothing waits for it to be ready."""
        with self._changed:
            return self._created > turn + self._max

    def wait_for_next_cart(self, turn: int) -> None:
        """Once cart ``turn`` is ready, wait (at most ``NEXT_CART_WAIT``) until the carts after it are created.

        Cartd's POST handler saves a row after it has queued the cart's first
        task; when the server is busy streaming the previous cart's tar, that
        save comes late, collides with ``get_files_locally`` on SQLite, and
        the new cart never gets ready (seen on the test stack: a POST that
        overlapped a GET took 378 ms and its cart died).  So the ready cart's
        transfer starts only once the next POST has returned.
        """
        wanted = min(len(self._sizes), turn + 1 + self._max)
        deadline = time.monotonic() + NEXT_CART_WAIT
        with self._changed:
            while self._created < wanted and not self.cancelled.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._changed.wait(left)

    def delete_between_carts(self, delete: Callable[[], None]) -> None:
        """Run ``delete`` (a downloaded cart's DELETE) when it cannot hit a cart's ``get_files_locally``.

        That is at once when no cart is staging; otherwise at the first of:
        every staging cart's ``get_files_locally`` is surely over (see the
        class; the caller's thread waits), or the last staging cart is ready
        (the server is between carts; :meth:`staging` runs it then, before
        the next cart is created; after the last cart of the download, the
        caller's thread runs it, alongside that cart's transfer).  No cart
        is created while a DELETE runs.  Without this, the second cart of a
        2000-file download on SQLite died 0.7 s into its staging, when the
        first one was deleted.
        """
        deletion = _Deletion(delete)
        with self._changed:
            if self._staging:
                self._deletions.append(deletion)
                while not deletion.taken and not self.cancelled.is_set():
                    wait = self._safe_in()
                    if wait is not None and wait <= 0:
                        break
                    self._changed.wait(0.1 if wait is None else min(wait, 0.1))
                if deletion.taken:
                    return  # run by a cart that got ready
                self._deletions.remove(deletion)
            deletion.taken = True
            self._deleting += 1
        self._run([deletion])

    def _safe_in(self) -> float | None:
        """Seconds until every staging cart is past ``get_files_locally`` (None: not known yet)."""
        safe = 0.0
        for turn in self._staging:
            at = self._safe_at(turn)
            if at is None:
                return None
            safe = max(safe, at)
        return safe - time.monotonic()

    def _take_deletions(self) -> list[_Deletion]:
        """Take every waiting deletion for running (lock held); no cart is created until they ran."""
        pending, self._deletions = self._deletions, []  # a waiter that runs its own takes it off the list
        for deletion in pending:
            deletion.taken = True
        self._deleting += len(pending)
        self._changed.notify_all()
        return pending

    def _run(self, deletions: list[_Deletion]) -> None:
        """Run deletions taken for running."""
        for deletion in deletions:
            try:
                deletion.run()
            finally:
                with self._changed:
                    self._deleting -= 1
                    self._changed.notify_all()

    def run_deletions(self) -> None:
        """Run the deletions still waiting (at the end of a download)."""
        with self._changed:
            pending = self._take_deletions()
        self._run(pending)


def run_carts(
    batches: list[list[FileRecord]],
    fetch: Callable[[list[FileRecord], Slots, int], None],
    max_staging: int,
    cancelled: threading.Event | None = None,
) -> None:
    """Run ``fetch(batch, slots, turn)`` for every batch, overlapping staging and transfers.

    ``fetch`` holds ``slots.staging(turn)`` while its cart stages and calls
    ``slots.check()`` often.  A single batch runs in the calling thread.
    On the first failure (or a KeyboardInterrupt) every other cart is
    cancelled, waited for (so each deletes its cart), and the error raised.
    """
    slots = Slots(max_staging, [len(batch) for batch in batches], cancelled)
    if len(batches) == 1:
        fetch(batches[0], slots, 0)
        return
    workers = min(len(batches), max_staging + 2)  # room for transfers while others stage
    LOGGER.info("download split into %d carts, %d staging at once", len(batches), max_staging)
    try:
        _run_pool(batches, fetch, slots, workers)
    finally:
        slots.run_deletions()


def _run_pool(
    batches: list[list[FileRecord]], fetch: Callable[[list[FileRecord], Slots, int], None], slots: Slots, workers: int
) -> None:
    """Run the batches on ``workers`` threads; cancel the rest at the first failure; raise it."""
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
