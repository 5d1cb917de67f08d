"""The lost-cart rule (Timeouts.lost*, Cart.wait, Cart.repost) on a fake clock and a fake Cartd: a cart staging
at the measured pace is never re-posted, a lost one is re-posted at the documented moment, the bound holds."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import Clock

from pacifica.downloader import cart as cart_module
from pacifica.downloader import polling
from pacifica.downloader.cart import Cart, Delivery
from pacifica.downloader.cartapi import CartAPI
from pacifica.downloader.config import Timeouts
from pacifica.downloader.exceptions import CartTimeoutError
from pacifica.downloader.polling import CartLost
from pacifica.downloader.progress import Progress, Tracker
from pacifica.downloader.records import FileRecord
from pacifica.downloader.retry import Retry, RetryBudget

RECORDS = [FileRecord(id=1, path="a/one.txt", hashtype="sha1", hashsum="0" * 40, size=10)]


class Answer:
    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        self.status_code, self.headers, self.reason, self.text = status_code, headers or {}, "", ""

    def close(self) -> None:
        pass


class LosingCartd:
    """A Cartd on the fake clock: the carts of the first ``lost`` POSTs stage for ever; a later one is ready
    ``stage`` seconds after its POST.  Records when each POST came."""

    def __init__(self, clock: Clock, timeouts: Timeouts, lost: int, stage: float = 5.0) -> None:
        self.clock, self.timeouts, self.lost, self.stage = clock, timeouts, lost, stage
        self.retry = Retry()
        self.posts: list[float] = []

    def request(self, method: str, url: str, **_: Any) -> Answer:
        if method == "POST":
            self.posts.append(self.clock.now)
            return Answer(201)
        assert method == "HEAD", method
        ready = len(self.posts) > self.lost and self.clock.now >= self.posts[-1] + self.stage
        return Answer(204, {"X-Pacifica-Status": "ready" if ready else "staging"})


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(polling, "time", clock)
    monkeypatch.setattr(cart_module, "time", clock)
    return clock


def new_cart(clock: Clock, tmp_path: Path, timeouts: Timeouts, lost: int, stage: float = 5.0,
             ) -> tuple[Cart, LosingCartd, list[Progress]]:
    server = LosingCartd(clock, timeouts, lost, stage)
    api = CartAPI("http://cartd.invalid", transport=server)  # type: ignore[arg-type]
    reports: list[Progress] = []
    delivery = Delivery(tmp_path, "data", None, Tracker(reports.append, RECORDS), None,  # type: ignore[arg-type]
                        RetryBudget(Retry()))
    cart = Cart(api, RECORDS, delivery)
    cart.create()
    return cart, server, reports


def wait_reposting(cart: Cart, clock: Clock, expected: float | None) -> list[float]:
    """Wait as the pipeline does, re-posting at each suspicion; return when each suspicion came."""
    suspicions: list[float] = []
    while True:
        try:
            cart.wait(expected=expected)
            return suspicions
        except CartLost:
            suspicions.append(clock.now)
            cart.repost()


def test_a_cart_staging_at_the_measured_pace_is_never_reposted(clock: Clock, tmp_path: Path) -> None:
    timeouts = Timeouts()
    cart, server, _ = new_cart(clock, tmp_path, timeouts, lost=0, stage=55.0)  # slower than 4 x 10 s, under 60 s
    assert wait_reposting(cart, clock, expected=10.0) == []
    assert cart.state == "ready" and cart.reposts == 0 and len(server.posts) == 1


def test_a_slow_first_cart_is_given_the_generous_floor(clock: Clock, tmp_path: Path) -> None:
    cart, server, _ = new_cart(clock, tmp_path, Timeouts(), lost=0, stage=590.0)  # a tape recall, say
    assert wait_reposting(cart, clock, expected=None) == []
    assert len(server.posts) == 1, "nothing measured yet: no suspicion before Timeouts.lost"


def test_a_lost_cart_is_reposted_at_the_documented_moment(clock: Clock, tmp_path: Path) -> None:
    timeouts = Timeouts()
    cart, server, reports = new_cart(clock, tmp_path, timeouts, lost=1)
    suspicions = wait_reposting(cart, clock, expected=10.0)
    assert suspicions == [pytest.approx(timeouts.lost_after(10.0, 0))], "suspected at max(60, 4 x 10 s) = 60 s"
    assert server.posts == [0.0, pytest.approx(60.0)], "posted again, under the same id, once"
    assert cart.state == "ready" and cart.reposts == 1
    assert reports[-1].reposts == 1, "the re-post is visible in progress"


def test_each_suspicion_comes_twice_as_late_and_the_bound_ends_in_cart_timeout(clock: Clock, tmp_path: Path) -> None:
    timeouts = Timeouts(wait=10**6)
    cart, server, _ = new_cart(clock, tmp_path, timeouts, lost=10**6)  # never ready
    with pytest.raises(CartTimeoutError) as raised:
        wait_reposting(cart, clock, expected=None)
    assert not isinstance(raised.value, CartLost), "the bound spent is the caller's error, not the driver's"
    assert server.posts == [0.0, pytest.approx(600.0), pytest.approx(600.0 + 1200.0)]
    assert cart.reposts == timeouts.reposts == 2
    assert clock.now == pytest.approx(600.0 + 1200.0 + 2400.0)
    message = str(raised.value)
    assert cart.url is not None and cart.url.rsplit("/", 1)[-1] in message
    assert "4200 s" in message and "2 re-post(s)" in message, message


def test_the_wait_limit_counts_from_the_first_wait_reposts_included(clock: Clock, tmp_path: Path) -> None:
    timeouts = Timeouts(wait=1000.0)
    cart, server, _ = new_cart(clock, tmp_path, timeouts, lost=10**6)
    with pytest.raises(CartTimeoutError):
        wait_reposting(cart, clock, expected=None)
    assert len(server.posts) == 2, "suspected at 600 s, then the limit of 1000 s came before a second suspicion"
    assert clock.now <= 1000.0 + polling.PollSchedule().cap


def test_reposts_zero_never_reposts(clock: Clock, tmp_path: Path) -> None:
    cart, server, _ = new_cart(clock, tmp_path, Timeouts(reposts=0, wait=10**6), lost=10**6)
    with pytest.raises(CartTimeoutError, match="0 re-post"):
        wait_reposting(cart, clock, expected=None)
    assert len(server.posts) == 1
