"""What the carts of one download have shown of the server's pace: when each could begin, how long it took.

Cartd's Celery worker runs its tasks in the order they were queued, and a
cart's tasks come in three waves (stage, status, pull; each file's task
queues the next one).  From the moments the client sees (a cart's POST
returned, a cart got ready) :class:`ServerPace` works out what the server
is doing:

* when Cartd can start on a cart: once it is created and the cart
  ``max_staging`` before it is ready (a cart posted ahead waits in the
  queue behind the ones before it);
* how long a cart takes per file (the last ready cart's time, counted from
  when it could begin, unless it needed a spare), hence how long a cart
  should take;
* whether a cart is in its last wave, so that a new cart's tasks queue
  behind all of its own: it has staged ``PREPOST_SHARE`` of the time the
  last cart took, per file;
* when a cart's first task, ``get_files_locally``, is surely over.  On
  SQLite, Cartd's default database, a request that writes while that task
  runs makes it fail with "database is locked", and the cart stays
  "staging" for ever: the task writes a row per file while it iterates over
  a query, which SQLite cannot let wait.  It starts at the latest once the
  cart (or its newest spare) is created and every cart before it is ready,
  and lasts at most ``SAFE_AFTER`` + ``SAFE_PER_FILE`` per file from then.

It is bookkeeping only: no threads, no waiting, no requests; the
:mod:`.scheduler` holds its lock and asks it.  The measurements behind the
constants are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Callable

#: A cart that has staged this share of the time the last cart took (per file) is in its last wave.
#: Judged early, the next cart's first tasks run among this cart's last ones (it gets ready a little
#: later, the worker never idles); judged late, the worker idles.  So early is the cheaper mistake.
PREPOST_SHARE = 0.5
#: A cart's first task is over this long after it could begin, plus SAFE_PER_FILE per file: several
#: times what Cartd's get_files_locally took on SQLite.
SAFE_AFTER = 1.0
SAFE_PER_FILE = 0.01


class ServerPace:
    """The timeline of one download's carts on the server, by turn (0 first).

    ``sizes`` are the files of each cart, in turn order; ``clock`` returns
    monotonic seconds (a test passes a fake one).

    >>> pace = ServerPace([10, 10], max_staging=1, clock=lambda: 0.0)
    >>> pace.admitted(0); pace.posted(0); pace.expected(1) is None
    True
    """

    def __init__(self, sizes: Sequence[int], max_staging: int, clock: Callable[[], float] = time.monotonic) -> None:
        """Follow carts of ``sizes`` files, ``max_staging`` of them staging at once."""
        self.sizes = list(sizes)
        self.max_staging = max_staging
        self.clock = clock
        self.staging: dict[int, float | None] = {}  # turn -> when its POST returned (None: not yet)
        self.created = 0  # POSTs returned (created or failed)
        self._ended: dict[int, float] = {}  # turn -> when its staging ended (ready, or failed)
        self._ended_prefix = 0  # turns 0 .. _ended_prefix - 1 have all ended ...
        self._ended_prefix_at = 0.0  # ... the last of them at this moment
        self._per_file: float | None = None  # seconds the last ready cart took per file
        self._spares: dict[int, float] = {}  # turn -> when its newest spare's POST returned

    def admitted(self, turn: int) -> None:
        """Cart ``turn`` may be posted now: it stages from here on."""
        self.staging[turn] = None

    def posted(self, turn: int) -> None:
        """Cart ``turn``'s POST has returned (created or failed)."""
        if turn in self.staging:
            self.staging[turn] = self.clock()
        self.created += 1

    def spare_posted(self, turn: int) -> None:
        """A spare of cart ``turn`` was posted: its first task may run from now; the cart's time is no measure."""
        if turn in self.staging:
            self._spares[turn] = self.clock()

    def ended(self, turn: int, ready: bool) -> None:
        """Cart ``turn`` stopped staging; learn its time per file when it got ``ready``."""
        now = self.clock()
        began = self.began(turn)
        if ready and began is not None and turn not in self._spares:
            self._per_file = (now - began) / max(1, self.sizes[turn])
        del self.staging[turn]
        self._ended[turn] = now
        while self._ended_prefix in self._ended:
            self._ended_prefix_at = max(self._ended_prefix_at, self._ended[self._ended_prefix])
            self._ended_prefix += 1

    def began(self, turn: int) -> float | None:
        """When Cartd could start on cart ``turn`` (None: not yet)."""
        posted = self.staging.get(turn)
        if turn < self.max_staging or posted is None:
            return posted
        before = self._ended.get(turn - self.max_staging)
        return None if before is None else max(posted, before)

    def expected(self, turn: int) -> float | None:
        """Seconds cart ``turn`` should take once begun, judging by the last ready cart (None: none yet)."""
        return None if self._per_file is None else self._per_file * self.sizes[turn]

    def finishing(self, turn: int) -> bool:
        """Cart ``turn`` is past its first task and, judging by the last cart, in its last wave."""
        began, safe, expected = self.began(turn), self.safe_at(turn), self.expected(turn)
        if began is None or safe is None or expected is None:
            return False
        return self.clock() >= max(began + PREPOST_SHARE * expected, safe)

    def busy(self) -> int:
        """How many carts stage that are not in their last wave."""
        return sum(1 for turn in self.staging if not self.finishing(turn))

    def safe_at(self, turn: int) -> float | None:
        """When cart ``turn``'s first task is surely over (None: not known yet)."""
        posted = self.staging.get(turn)
        if posted is None or self._ended_prefix < turn:
            return None
        posted = max(posted, self._spares.get(turn, posted))
        return max(posted, self._ended_prefix_at) + SAFE_AFTER + SAFE_PER_FILE * self.sizes[turn]

    def safe_in(self) -> float | None:
        """Seconds until every staging cart is past its first task (None: not known yet; <= 0: now)."""
        safe = 0.0
        for turn in self.staging:
            at = self.safe_at(turn)
            if at is None:
                return None
            safe = max(safe, at)
        return safe - self.clock()
