"""When a staging cart is polled (polling.PollSchedule, run by Polls for CartAPI.wait_for_cart and
Cart.wait): fast at first, gently for long carts, often near the expected moment unless nothing waits for it.
A fake clock and a fake server; no time passes."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from support.helpers import Clock

from pacifica.downloader import CartAPI
from pacifica.downloader import _polling as polling
from pacifica.downloader._config import Timeouts
from pacifica.downloader._polling import Polls, PollSchedule

POLL_FIRST, POLL_CAP, POLL_NEAR = PollSchedule().first, PollSchedule().cap, PollSchedule().near
URL = "http://cartd.invalid/c"


class Answer:
    def __init__(self, status: str) -> None:
        self.status_code, self.headers, self.reason = 204, {"X-Pacifica-Status": status}, "No Content"


class Server:
    """A cart that becomes ready at ``ready_at`` on the fake clock; records when it was polled."""

    def __init__(self, clock: Clock, ready_at: float) -> None:
        self.clock, self.ready_at = clock, ready_at
        self.polls: list[float] = []
        self.timeouts = Timeouts()

    def request(self, method: str, url: str, **_: Any) -> Answer:
        assert method == "HEAD"
        self.polls.append(self.clock.now)
        return Answer("ready" if self.clock.now >= self.ready_at else "staging")


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(polling, "time", clock)
    return clock


def wait(clock: Clock, ready_at: float, expect: float | None = None, **kwargs: Any) -> Server:
    """Poll a cart ready at ``ready_at``: through CartAPI.wait_for_cart, or with an expected time as Cart.wait does."""
    server = Server(clock, ready_at)
    api = CartAPI("http://cartd.invalid", transport=server)  # type: ignore[arg-type]
    if expect is None and not kwargs:
        assert api.wait_for_cart(URL) == URL
    else:
        polls = Polls(PollSchedule(expect=expect), 3600.0, URL, **kwargs)
        for deadline in polls:
            polls.answered(api.probe(URL, deadline=deadline))
    return server


def test_a_small_cart_is_seen_ready_within_tens_of_milliseconds(clock: Clock) -> None:
    server = wait(clock, 0.3)
    assert server.polls[1] - server.polls[0] == pytest.approx(POLL_FIRST)
    assert server.polls[-1] - 0.3 < 0.1


def test_a_long_cart_is_polled_at_most_every_cap(clock: Clock) -> None:
    server = wait(clock, 600.0)
    gaps = [b - a for a, b in zip(server.polls, server.polls[1:])]
    assert max(gaps) == pytest.approx(POLL_CAP)
    assert len(server.polls) < 600 / POLL_CAP + 30


def test_polls_come_often_near_the_expected_moment(clock: Clock) -> None:
    server = wait(clock, 9.6, expect=10.0)  # a little sooner than the similar cart
    assert server.polls[-1] - 9.6 <= POLL_NEAR + 1e-9
    assert len([at for at in server.polls if at < 8.0]) <= 8.0 / POLL_CAP + 1


def test_polls_stay_gentle_when_nothing_waits_for_the_cart(clock: Clock) -> None:
    relaxed = threading.Event()
    relaxed.set()  # the carts after it are queued already
    server = wait(clock, 9.6, expect=10.0, relaxed=relaxed)
    gaps = [b - a for a, b in zip(server.polls, server.polls[1:])]
    assert min(gaps) == pytest.approx(POLL_CAP), "near-polls although nothing waits for the cart"
    assert len(server.polls) <= 10.0 / POLL_CAP + 2
