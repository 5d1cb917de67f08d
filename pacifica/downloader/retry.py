"""The retry policy: how often and how patiently a failed request is tried again.

A :class:`Retry` is an immutable value, shared freely between downloaders and
threads; :meth:`Retry.replace` gives a changed copy.  Its defaults are chosen
for a Cartd behind a proxy on a busy machine:

* ``attempts=5`` tries per request: enough to ride out a proxy restart or a
  worker recycling (a few seconds), few enough that a dead server is reported
  within about a minute.
* ``backoff=0.5`` seconds, doubling to ``backoff_max=30``: the first retry is
  quick (most resets are one-offs), later ones give an overloaded server room.
* ``jitter=0.5``: each delay is randomly shortened by up to half, so many
  clients failing together do not come back together.
* ``statuses``: 408, 429, 500, 502, 503 and 504 are worth another try;
  other 4xx answers are the caller's mistake and are reported at once.
* ``respect_retry_after=True``: a 429/503 ``Retry-After`` header (seconds or
  an HTTP date) replaces the computed delay, capped at ``backoff_max``.
"""
from __future__ import annotations

import dataclasses
import random
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

__all__ = ["Retry"]


@dataclasses.dataclass(frozen=True)
class Retry:
    """How many times to try a request and how long to wait between tries.

    >>> Retry().delay(1) <= 0.5
    True
    >>> Retry(attempts=1)   # never retry
    Retry(attempts=1, backoff=0.5, backoff_max=30.0, jitter=0.5, statuses=..., respect_retry_after=True)
    """

    attempts: int = 5
    backoff: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.5
    statuses: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
    respect_retry_after: bool = True

    def __post_init__(self) -> None:
        """Refuse values that would make the policy meaningless."""
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError("Retry.attempts must be an integer >= 1 (1 means no retry)")
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
