"""When each cart of a download may take its next step: its POST, its polls, its transfer, its DELETE.

The :mod:`.pipeline` asks a :class:`Scheduler` before each step of each
cart; the scheduler decides from what :class:`.pace.ServerPace` has seen
of the server.  Nothing below it (the cart, the protocol) knows it exists.

* **Turn order.**  Cart ``turn`` is posted only after every cart before it,
  so the carts stage in the order :func:`.split.split_batches` made them
  and the small first and last carts really come first and last.
* **Admission and posting ahead.**  At most ``max_staging`` carts stage at
  once, but a cart in its last wave no longer counts: the next cart's
  tasks then queue behind all of its own, so creating it costs that cart
  nothing, and Cartd's worker goes straight on to it instead of idling
  while the client sees the first cart ready and creates the next.  Until
  one cart's time is known (the first cart) a cart counts until it is
  ready.
* **Writes kept away from a starting cart.**  On SQLite a request that
  writes while a cart's first task runs kills that cart (see
  :mod:`.pace`), so a downloaded cart's DELETE waits until every staging
  cart is past that task, or runs between carts; and a ready cart's
  transfer starts once the next cart's POST has returned (a POST held up by
  a busy server saves its row late, into the next cart's first task).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from ._exceptions import Cancelled
from ._pace import ServerPace

#: Seconds a ready cart's transfer waits for the next cart's POST to return, at most.
NEXT_CART_WAIT = 2.0


@dataclass
class _Write:
    """A write (a DELETE, a re-POST) waiting for a moment when it cannot hurt the cart that stages."""

    run: Callable[[], object]
    taken: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class Scheduler:
    """The turn order, staging slots and DELETE timing of one download's carts (see the module).

    ``sizes`` are the files of each cart in turn order; ``cancelled`` is the
    download's flag: every wait here ends with :class:`Cancelled` once it is
    set.  Thread-safe: each cart runs in its own thread.
    """

    def __init__(
        self,
        max_staging: int,
        sizes: Sequence[int] = (1,),
        cancelled: threading.Event | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Let ``max_staging`` carts stage at once; ``clock`` times the server's pace (default: monotonic time)."""
        self.pace = ServerPace(sizes, max_staging, clock or time.monotonic)
        self.cancelled = cancelled if cancelled is not None else threading.Event()
        self._max = max_staging
        self._next_turn = 0
        self._writes: list[_Write] = []
        self._writing = 0
        self._followed: dict[int, threading.Event] = {}
        self._changed = threading.Condition()

    def check(self) -> None:
        """Raise :class:`Cancelled` once the download is being abandoned."""
        if self.cancelled.is_set():
            raise Cancelled("another cart of this download failed")

    @contextmanager
    def staging(self, turn: int = 0) -> Iterator[None]:
        """Hold a staging slot for the ``with`` block: from cart ``turn``'s POST until it is ready.

        The slot waits for every earlier turn, for room (see the module), and
        for a DELETE in progress.  Leaving the block without an error means
        the cart got ready.
        """
        with self._changed:
            self.check()
            while not (self._next_turn == turn and not self._writing and self._has_room()):
                self._changed.wait(0.1)
                self.check()
            self.pace.admitted(turn)
            self._next_turn += 1
            self._changed.notify_all()
        ready = False
        try:
            yield
            ready = True
        finally:
            with self._changed:
                self.pace.ended(turn, ready)
                self._changed.notify_all()
                # No other cart stages: the waiting writes run now, before the next cart is created.  After
                # the last cart there is none to protect, and their own threads run them while this
                # cart's transfer goes on.
                more = self._next_turn < len(self.pace.sizes)
                pending = self._take_writes() if more and not self.pace.staging else []
            self._run(pending)

    def _has_room(self) -> bool:
        """Fewer than ``max_staging`` carts stage that are not in their last wave (lock held)."""
        return self.pace.busy() < self._max

    def created(self, turn: int = 0) -> None:
        """Cart ``turn``'s POST has returned (created or failed)."""
        with self._changed:
            self.pace.posted(turn)
            for earlier, flag in self._followed.items():
                if self.pace.created > earlier + self._max:
                    flag.set()
            self._changed.notify_all()

    def wait_to_begin(self, turn: int) -> None:
        """Wait until Cartd can start on cart ``turn`` (a cart posted ahead waits for the one before it).

        Polling it before then would only load the server; and its time per
        file, which times the polls of the carts after it, counts from then.
        """
        with self._changed:
            while self.pace.began(turn) is None:
                self.check()
                self._changed.wait(0.1)

    def expected(self, turn: int) -> float | None:
        """Seconds cart ``turn`` should take to stage once begun, judging by the last cart (None: no cart yet)."""
        with self._changed:
            return self.pace.expected(turn)

    def spare_posted(self, turn: int) -> None:
        """A spare of cart ``turn`` was posted (it seemed lost)."""
        with self._changed:
            self.pace.spare_posted(turn)
            self._changed.notify_all()

    def followed(self, turn: int) -> threading.Event:
        """A flag set once the carts that take cart ``turn``'s place on the server are created.

        From then on nothing waits for the moment cart ``turn`` is ready, so
        its polls need not come fast near the end (see :mod:`.polling`).
        """
        with self._changed:
            flag = self._followed.setdefault(turn, threading.Event())
            if self.pace.created > turn + self._max:
                flag.set()
            return flag

    def wait_for_next_cart(self, turn: int) -> None:
        """Once cart ``turn`` is ready, wait (at most ``NEXT_CART_WAIT``) until the carts after it are created."""
        wanted = min(len(self.pace.sizes), turn + 1 + self._max)
        deadline = time.monotonic() + NEXT_CART_WAIT
        with self._changed:
            while self.pace.created < wanted and not self.cancelled.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._changed.wait(left)

    def write_when_safe(self, write: Callable[[], object]) -> None:
        """Run ``write`` (a DELETE, a spare's POST) when it cannot hit a cart's first task.

        That is at once when no cart is staging; otherwise at the first of:
        every staging cart is surely past its first task (the caller's
        thread waits, then runs it), or the last staging cart is ready (the
        server is between carts: :meth:`staging` runs it then, before the
        next cart is created; after the last cart of the download, the
        caller's thread runs it, alongside that cart's transfer).  No cart is
        created while a write runs.  Returns once ``write`` has run, raising
        what it raised, whichever thread ran it.
        """
        job = _Write(write)
        with self._changed:
            if self.pace.staging:
                self._writes.append(job)
                while not job.taken and not self.cancelled.is_set():
                    wait = self._safe_in()
                    if wait is not None and wait <= 0:
                        break
                    self._changed.wait(0.1 if wait is None else min(wait, 0.1))
                if not job.taken:
                    self._writes.remove(job)
            mine = not job.taken  # else taken by a cart that got ready, which runs it
            if mine:
                job.taken = True
                self._writing += 1
        if mine:
            self._run([job])
        job.done.wait()
        if job.error is not None:
            raise job.error

    def _safe_in(self) -> float | None:
        """Seconds until every staging cart is past its first task (lock held; None: not known yet)."""
        return self.pace.safe_in()

    def _take_writes(self) -> list[_Write]:
        """Take every waiting write for running (lock held); no cart is created until they ran."""
        pending, self._writes = self._writes, []  # a waiter that runs its own takes it off the list
        for job in pending:
            job.taken = True
        self._writing += len(pending)
        self._changed.notify_all()
        return pending

    def _run(self, writes: list[_Write]) -> None:
        """Run writes taken for running; what one raises is kept for its waiter, not raised in this thread."""
        for job in writes:
            try:
                job.run()
            except BaseException as error:  # noqa: BLE001 - handed to the thread that asked for the write
                job.error = error
            finally:
                with self._changed:
                    self._writing -= 1
                    self._changed.notify_all()
                job.done.set()

    def run_pending_writes(self) -> None:
        """Run the writes still waiting (a downloaded cart's DELETE, at the end of a download)."""
        with self._changed:
            pending = self._take_writes()
        self._run(pending)
