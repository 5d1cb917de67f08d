"""The retry policy: how patiently a failed request is tried again.

A :class:`Retry` is an immutable value, shared freely between downloaders and
threads; :meth:`Retry.replace` gives a changed copy.  Its defaults are chosen
to ride out a server, proxy, broker or worker restart:

* ``attempts=None``: no count of tries ends a download; the patience below
  does.  A restart refuses connections for seconds, and refused connections
  fail at once, so a count is spent in the few seconds of the backoff: five
  tries in a row ended a download during a 4 s Cartd restart.  An integer
  also ends it after that many failed tries in a row (1: never retry).
* ``backoff=0.5`` seconds, doubling to ``backoff_max=10``: the first retry is
  quick (most resets are one-offs), later ones give an overloaded server
  room, and a server back from a restart is seen within 10 s.
* ``jitter=0.5``: each delay is randomly shortened by up to half, so many
  clients failing together do not come back together.
* ``statuses``: 408, 429, 500, 502, 503 and 504 are worth another try;
  other 4xx answers are the caller's mistake and are reported at once.
* ``respect_retry_after=True``: a 429/503 ``Retry-After`` header (seconds or
  an HTTP date) replaces the computed delay, capped at ``backoff_max``.

A download spends one budget (:class:`RetryBudget`) across every layer: a
request tried again, a broken stream resumed with ``Range``, a stream
started over.  It ends the download when its ``patience``
(``Timeouts.progress``, 60 s) has passed since the last progress (an
answered request, or stream bytes never received before), or since the
download began: no try starts, and no request waits for its answer, past
that moment (and, with ``attempts`` set, after that many failed tries in a
row).

So a server that is down, mute, or breaks or trickles every stream is
reported within ``Timeouts.progress`` of its last progress, with every
failed try listed; one that comes back within it is not noticed at all.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Retry:
    """How many times to try a request and how long to wait between tries.

    >>> Retry().delay(1) <= 0.5
    True
    >>> Retry(attempts=1)   # never retry
    Retry(attempts=1, backoff=0.5, backoff_max=10.0, jitter=0.5, statuses=..., respect_retry_after=True)
    """

    #: Failed tries in a row that end a download (None: only the patience ends it).
    attempts: int | None = None
    backoff: float = 0.5
    backoff_max: float = 10.0
    jitter: float = 0.5
    statuses: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
    respect_retry_after: bool = True

    def __post_init__(self) -> None:
        """Refuse values that would make the policy meaningless."""
        if self.attempts is not None and (
            isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1
        ):
            raise ValueError("Retry.attempts must be None or an integer >= 1 (1 means no retry)")
        if not (self.backoff >= 0 and self.backoff_max >= 0 and 0 <= self.jitter <= 1):
            raise ValueError("Retry.backoff and backoff_max must be >= 0 and jitter within [0, 1]")
        object.__setattr__(self, "statuses", frozenset(self.statuses))

    def replace(self, **changes: Any) -> Retry:
        """Return a copy with ``changes`` applied: ``Retry().replace(attempts=10)``."""
        return dataclasses.replace(self, **changes)

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based).

        ``retry_after`` is the server's ``Retry-After`` header, if any.
        """
        if self.respect_retry_after and retry_after:
            seconds = _parse_retry_after(retry_after)
            if seconds is not None:
                return min(seconds, self.backoff_max)
        base = min(self.backoff * (2.0 ** min(attempt - 1, 64)), self.backoff_max)
        return base * (1 - self.jitter * random.random())


class RetryBudget:
    """The one retry budget of a download, spent by every layer and shared by the threads of its carts.

    It holds what a download has spent of its :class:`Retry` policy: the
    tries failed since the last progress (:attr:`spent`) and why each failed
    try failed (:attr:`history`); :meth:`spend` records a failed try and says how long to wait before the
    next one, or that none is left.  Progress gives the tries back and
    restarts the ``patience`` clock: :meth:`progressed` for a request the
    server answered, :meth:`reached` for stream bytes well beyond the
    furthest byte any try of that stream reached (a stream that keeps
    breaking at about the same place makes no progress).  ``patience`` is
    seconds without progress after which no try may start or go on (None:
    no such limit); ``clock`` gives monotonic seconds (a test passes a fake
    one).

    >>> budget = RetryBudget(Retry(attempts=2, jitter=0))
    >>> budget.spend("reset"), budget.spend("reset again")
    (0.5, None)
    """

    def __init__(
        self, retry: Retry, patience: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Start with ``retry``'s tries unspent and the patience clock running from now."""
        self._retry = retry
        self._history: list[str] = []
        #: Tries failed since the last progress: the part of ``retry.attempts`` spent.
        self.spent = 0
        self.patience = patience
        self._clock = clock
        self._last_progress = clock()
        self._impatient = False  # the last spend() ended the budget for want of progress
        self._furthest: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def retry(self) -> Retry:
        """The policy this budget spends."""
        return self._retry

    @property
    def history(self) -> list[str]:
        """Why each failed try of the download failed, in order."""
        with self._lock:
            return list(self._history)

    @property
    def quiet_deadline(self) -> float | None:
        """The monotonic moment the patience runs out, unless progress comes first (None: no patience)."""
        with self._lock:
            return self._patience_ends()

    def _patience_ends(self) -> float | None:
        """:attr:`quiet_deadline`, with the lock held."""
        return None if self.patience is None else self._last_progress + self.patience

    def out_of_patience(self, delay: float = 0.0) -> bool:
        """Whether a try started ``delay`` seconds from now would start after the patience ran out."""
        deadline = self.quiet_deadline
        return deadline is not None and self._clock() + delay >= deadline

    def why_spent(self) -> str:
        """Why the budget ended (or would end) the download, for the error message."""
        if self.patience is not None and (self._impatient or self.out_of_patience()):
            return f"no sign of progress from the server for {self.patience:g} s"
        return f"{self.spent} tries failed in a row"

    def spend(self, reason: str, retry_after: str | None = None) -> float | None:
        """Record a failed try; return the seconds to wait before the next, or None when the budget is spent
        (the next try would start after the patience ran out, or ``attempts`` failed in a row)."""
        with self._lock:
            self._history.append(reason)
            self.spent += 1
            if self._retry.attempts is not None and self.spent >= self._retry.attempts:
                return None
            delay = self._retry.delay(self.spent, retry_after)
            ends = self._patience_ends()
            self._impatient = ends is not None and self._clock() + delay >= ends
            return None if self._impatient else delay

    def progressed(self) -> None:
        """The server answered: the tries spent so far are given back, the patience clock starts again."""
        with self._lock:
            self._last_progress = self._clock()
            self.spent = 0

    def reached(self, stream: str, position: int, step: int = 1) -> None:
        """Stream ``stream`` delivered bytes up to ``position``: progress once that is ``step`` bytes or more
        past the furthest any try got (a try that breaks a few bytes further than the last is no progress)."""
        with self._lock:
            if position < self._furthest.get(stream, 0) + step:
                return
            self._furthest[stream] = position
            self._last_progress = self._clock()
            self.spent = 0


def _parse_retry_after(value: str) -> float | None:
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
