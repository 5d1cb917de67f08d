"""When to look at a staging cart again: the polling schedule, an immutable value beside the retry policy.

Cartd reports no progress while it stages, so the client polls.  Polling
starts fast, so a small cart is seen ready within tens of milliseconds, and
slows down to ``cap``, so a big one is not flooded.  When the time a similar
cart took is known (``expect``), polls start at ``cap`` and come every
``near`` seconds from ``near_share`` of that time on, so the moment the cart
is ready is seen at once without polling fast all along: each HEAD costs
Cartd a request and a database connection on the cores that stage the files.
:class:`Polls` runs a schedule for one cart; whoever iterates it makes the polls.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from ._exceptions import CartLost, CartTimeoutError
from ._redaction import redact

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PollSchedule:
    """The pauses between the polls of one staging cart, in seconds.

    >>> PollSchedule().first, PollSchedule(expect=10.0).first_interval()
    (0.02, 0.5)
    """

    #: Seconds a similar cart took to stage (None: not known).
    expect: float | None = None
    #: The first pause, when nothing is known of the cart.
    first: float = 0.02
    #: Each pause is this many times the last ...
    growth: float = 1.25
    #: ... up to this.
    cap: float = 0.5
    #: The pause from ``near_share`` of ``expect`` on: the moment the cart is ready is seen at once.
    near: float = 0.05
    near_share: float = 0.85

    def replace(self, **changes: Any) -> PollSchedule:
        """Return a copy with ``changes`` applied: ``PollSchedule().replace(expect=12.0)``."""
        return dataclasses.replace(self, **changes)

    def first_interval(self) -> float:
        """The first pause: fast when nothing is known, else already gentle."""
        return self.first if self.expect is None else self.cap

    def pause(self, elapsed: float, interval: float, relaxed: bool) -> float:
        """The pause after a poll ``elapsed`` seconds into staging, when the growing interval is ``interval``.

        ``relaxed``: nothing waits for the moment the cart is ready (the
        carts after it are already queued), so no near-polls.
        """
        near_at = None if self.expect is None or relaxed else self.near_share * self.expect
        if near_at is not None and elapsed + interval >= near_at:
            return self.near if elapsed >= near_at else near_at - elapsed
        return interval

    def next_interval(self, interval: float) -> float:
        """The growing interval after ``interval``."""
        return min(interval * self.growth, self.cap)


class Polls:
    """The polls of one staging cart, as an iterator: the caller makes each poll, the schedule says when.

    Each item is the monotonic deadline of one poll; the caller asks the
    server (no later than it) and tells the answer with :meth:`answered`
    before asking for the next.  Iteration ends once the answer is
    ``"ready"`` (:attr:`took` then holds the seconds it took), and raises
    :class:`CartTimeoutError` once ``limit`` seconds pass, and
    :class:`CartLost` when the cart is still staging ``lost_after`` seconds
    in (a poll is made at that moment).  ``relaxed``, once set, says that
    nothing waits for the moment it is ready any more (see
    :meth:`PollSchedule.pause`).  A poll that raises :class:`CartTimeoutError`
    itself (the request's deadline) is ended with :meth:`timed_out`.

    >>> polls = Polls(PollSchedule(), 60.0, url)                  # doctest: +SKIP
    >>> for deadline in polls:                                    # doctest: +SKIP
    ...     polls.answered(api.probe(url, deadline=deadline))
    """

    def __init__(
        self,
        schedule: PollSchedule,
        limit: float,
        cart_url: str,
        *,
        relaxed: threading.Event | None = None,
        lost_after: float | None = None,
    ) -> None:
        """Poll ``cart_url`` on ``schedule`` for at most ``limit`` seconds; see the class docstring."""
        self.schedule = schedule
        self.limit = limit
        self.cart_url = cart_url
        self.relaxed = relaxed
        self.lost_after = lost_after
        self.status = "staging"
        self.took: float | None = None

    def answered(self, status: str) -> None:
        """The last poll's answer: ``"ready"``, or a status still staging."""
        self.status = status

    def timed_out(self) -> CartTimeoutError:
        """The error for a cart not ready within the limit."""
        return CartTimeoutError(
            f"the cart {redact(self.cart_url)} was still {self.status!r} after {self.limit:.0f} s; "
            "raise the timeout for large carts",
            cart_url=self.cart_url,
        )

    def __iter__(self) -> Iterator[float]:
        """Yield each poll's deadline, pausing on the schedule between them."""
        schedule, lost_after = self.schedule, self.lost_after
        started = time.monotonic()
        deadline = started + self.limit
        interval = schedule.first_interval()
        while True:
            yield deadline
            if self.status == "ready":
                self.took = time.monotonic() - started
                LOGGER.info("cart %s ready after %.2f s", redact(self.cart_url), self.took)
                return
            elapsed = time.monotonic() - started
            if lost_after is not None and elapsed >= lost_after and time.monotonic() < deadline:
                raise CartLost(
                    f"the cart {redact(self.cart_url)} was still {self.status!r} after {elapsed:.0f} s: "
                    "Cartd may have lost its tasks",
                    cart_url=self.cart_url,
                    waited=elapsed,
                )
            remaining = deadline - time.monotonic()
            if remaining > 0:
                pause = schedule.pause(elapsed, interval, self.relaxed is not None and self.relaxed.is_set())
                if lost_after is not None:
                    pause = min(pause, max(0.0, lost_after - elapsed))  # poll at the moment the cart is suspected
                time.sleep(max(0.0, min(pause, remaining)))
                interval = schedule.next_interval(interval)
            if time.monotonic() >= deadline:
                raise self.timed_out()
