"""When to look at a staging cart again: the polling schedule, an immutable value beside the retry policy.

Cartd reports no progress while it stages, so the client polls.  Polling
starts fast, so a small cart is seen ready within tens of milliseconds, and
slows down to ``cap``, so a big one is not flooded.  When the time a similar
cart took is known (``expect``), polls start at ``cap`` and come every
``near`` seconds from ``near_share`` of that time on, so the moment the cart
is ready is seen at once without polling fast all along: each HEAD costs
Cartd a request and a database connection on the cores that stage the files.
:func:`poll_until_ready` runs a schedule against one status probe.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable

from ._exceptions import CartLost, CartTimeoutError
from ._redaction import redact

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PollSchedule:
    """The pauses between the polls of one staging cart, in seconds.

    >>> PollSchedule().first, PollSchedule(expect=10.0).first_interval()
    (0.02, 0.5)
    """

    first: float = 0.02
    growth: float = 1.25
    cap: float = 0.5
    near: float = 0.05
    near_share: float = 0.85
    #: Seconds a similar cart took to stage (None: not known).
    expect: float | None = None

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


def poll_until_ready(
    probe: Callable[[float], str],
    schedule: PollSchedule,
    limit: float,
    cart_url: str,
    *,
    on_poll: Callable[[str], None] | None = None,
    relaxed: threading.Event | None = None,
    lost_after: float | None = None,
) -> float:
    """Call ``probe(deadline)`` on ``schedule`` until it answers ``"ready"``; return the seconds it took.

    ``probe`` makes one status request (no later than the monotonic
    ``deadline``) and returns the cart's status, raising for a final one
    (failed, unknown).  ``on_poll(status)`` is called after each poll that
    finds the cart still staging; ``relaxed``, once set, says that nothing
    waits for the moment it is ready any more (see :meth:`PollSchedule.pause`).  Raises
    :class:`CartTimeoutError` once ``limit`` seconds pass, and
    :class:`CartLost` when the cart is still staging ``lost_after`` seconds
    in (a poll is made at that moment).
    """
    started = time.monotonic()
    deadline = started + limit
    interval = schedule.first_interval()
    status = "staging"

    def timed_out() -> CartTimeoutError:
        return CartTimeoutError(
            f"the cart {redact(cart_url)} was still {status!r} after {limit:.0f} s; raise the timeout for large carts",
            cart_url=cart_url,
        )

    while True:
        try:
            status = probe(deadline)
        except CartTimeoutError as err:
            raise timed_out() from err
        if status == "ready":
            took = time.monotonic() - started
            LOGGER.info("cart %s ready after %.2f s", redact(cart_url), took)
            return took
        elapsed = time.monotonic() - started
        if lost_after is not None and elapsed >= lost_after and time.monotonic() < deadline:
            raise CartLost(
                f"the cart {redact(cart_url)} was still {status!r} after {elapsed:.0f} s: "
                "Cartd may have lost its tasks",
                cart_url=cart_url,
                waited=elapsed,
            )
        if on_poll is not None:
            on_poll(status)
        remaining = deadline - time.monotonic()
        if remaining > 0:
            pause = schedule.pause(elapsed, interval, relaxed is not None and relaxed.is_set())
            if lost_after is not None:
                pause = min(pause, max(0.0, lost_after - elapsed))  # poll at the moment the cart is suspected
            time.sleep(max(0.0, min(pause, remaining)))
            interval = schedule.next_interval(interval)
        if time.monotonic() >= deadline:
            raise timed_out()
