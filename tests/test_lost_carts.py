"""The lost-cart rule (LostCarts, Cart.wait, Cart.post_spare) on a fake clock and a fake Cartd: a cart still
staging when its spare is due gets one, never more than ``LostCarts.spares``; the first copy ready is downloaded
and every other deleted; a slow, healthy cart is never given up."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from support.helpers import Clock

from pacifica.downloader import CartAPI
from pacifica.downloader import _cart as cart_module
from pacifica.downloader import _polling as polling
from pacifica.downloader._cart import Cart, DownloadContext
from pacifica.downloader._config import LostCarts, Timeouts
from pacifica.downloader._exceptions import CartLost, CartTimeoutError
from pacifica.downloader._progress import Progress, Tracker
from pacifica.downloader._records import FileRecord
from pacifica.downloader._retry import Retry, RetryBudget

RECORDS = [FileRecord(id=n, path=f"a/{n}.txt", hashtype="sha1", hashsum="0" * 40, size=10) for n in range(10)]


class Answer:
    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        self.status_code, self.headers, self.reason, self.text = status_code, headers or {}, "", ""

    def close(self) -> None:
        pass


class FakeCartd:
    """A Cartd on the fake clock.  ``stages(n)`` says how long the n-th cart posted (0 first) takes to get ready
    from its POST (None: lost, staging for ever).  Records each POST and DELETE, with the moment it came."""

    def __init__(self, clock: Clock, timeouts: Timeouts, stages: Callable[[int], float | None]) -> None:
        self.clock, self.timeouts, self.stages = clock, timeouts, stages
        self.retry = Retry()
        self.posts: list[tuple[float, str]] = []
        self.deletes: list[str] = []

    def request(self, method: str, url: str, **_: Any) -> Answer:
        if method == "POST":
            self.posts.append((self.clock.now, url))
            return Answer(201)
        if method == "DELETE":
            self.deletes.append(url)
            return Answer(200 if url not in self.deletes[:-1] else 404)
        assert method == "HEAD", method
        if url in self.deletes:
            return Answer(404)
        number = [posted for _, posted in self.posts].index(url)
        stage = self.stages(number)
        ready = stage is not None and self.clock.now >= self.posts[number][0] + stage
        return Answer(204, {"X-Pacifica-Status": "ready" if ready else "staging"})


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(polling, "time", clock)
    monkeypatch.setattr(cart_module, "time", clock)
    return clock


def new_cart(
    clock: Clock,
    tmp_path: Path,
    stages: Callable[[int], float | None],
    rule: LostCarts = LostCarts(),
    timeouts: Timeouts = Timeouts(),
) -> tuple[Cart, FakeCartd, list[Progress]]:
    server = FakeCartd(clock, timeouts, stages)
    api = CartAPI("http://cartd.invalid", transport=server)  # type: ignore[arg-type]
    reports: list[Progress] = []
    context = DownloadContext(
        tmp_path,
        "data",
        None,
        Tracker(reports.append, RECORDS),
        None,  # type: ignore[arg-type]
        RetryBudget(Retry()),
        lost=rule,
    )
    cart = Cart(api, RECORDS, context)
    cart.create()
    return cart, server, reports


def wait_posting_spares(cart: Cart) -> None:
    """Wait as the pipeline does: post a spare at each suspicion, drop the other copies once one is ready."""
    while True:
        try:
            cart.wait()
            break
        except CartLost:
            cart.post_spare()
    if cart.spares:
        cart.drop_spares()


def spare_due(rule: LostCarts = LostCarts()) -> tuple[float, float]:
    """The earliest and latest moment a spare of a RECORDS cart comes, after its newest copy began."""
    return rule.spare_after(len(RECORDS), 0.0), rule.spare_after(len(RECORDS), 1.0)


def test_a_healthy_cart_ready_before_its_spare_is_due_gets_none(clock: Clock, tmp_path: Path) -> None:
    cart, server, _ = new_cart(clock, tmp_path, lambda n: spare_due()[0] - 1.0)
    wait_posting_spares(cart)
    assert cart.state == "ready" and cart.spares == 0 and len(server.posts) == 1


def test_a_lost_cart_gets_a_spare_which_is_downloaded_and_the_lost_one_deleted(clock: Clock, tmp_path: Path) -> None:
    cart, server, reports = new_cart(clock, tmp_path, lambda n: None if n == 0 else 5.0)
    first = cart.url
    wait_posting_spares(cart)
    earliest, latest = spare_due()
    (_, lost), (spare_at, spare) = server.posts
    assert earliest <= spare_at <= latest, "the spare comes 30 s + 0.1 s per file after the cart began, +-10 %"
    assert lost == first and spare != first, "a spare is a new cart: Cartd answers for the newest row of an id"
    assert cart.url == spare and cart.state == "ready", "the copy ready first is the one downloaded"
    assert server.deletes == [first], "the lost copy is deleted once the spare is ready"
    assert clock.now == pytest.approx(spare_at + 5.0, abs=PollingSlack), "ready as soon as the spare is"
    assert reports[-1].spares == 1, "the spare is visible in progress"
    assert cart.delete() and server.deletes == [first, spare], "every copy deleted in the end"


#: The most a poll can come after the moment the cart is ready: the poll schedule's cap.
PollingSlack = polling.PollSchedule().cap + 1e-6


def test_a_slow_healthy_cart_is_never_given_up_and_its_spares_are_bounded(clock: Clock, tmp_path: Path) -> None:
    """A cart of 10 files taking 200 s (20 s per file): at most LostCarts.spares spares, each behind the cart
    in the server's queue; the first cart is the one downloaded, whatever it staged is used, every spare deleted."""
    rule = LostCarts()
    cart, server, _ = new_cart(clock, tmp_path, lambda n: 200.0 if n == 0 else 400.0)
    first = cart.url
    wait_posting_spares(cart)
    assert cart.url == first and clock.now == pytest.approx(200.0, abs=PollingSlack)
    assert cart.spares == rule.spares == len(server.posts) - 1, "no more spares than the rule allows"
    times = [at for at, _ in server.posts]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert all(spare_due(rule)[0] <= gap <= spare_due(rule)[1] for gap in gaps), gaps
    assert sorted(server.deletes) == sorted(url for _, url in server.posts[1:]), "every spare deleted once ready"


def test_when_every_copy_is_lost_the_wait_limit_ends_it_with_a_message_naming_the_spares(
    clock: Clock, tmp_path: Path
) -> None:
    cart, server, _ = new_cart(clock, tmp_path, lambda n: None, timeouts=Timeouts(wait=600.0))
    with pytest.raises(CartTimeoutError) as raised:
        wait_posting_spares(cart)
    assert not isinstance(raised.value, CartLost), "the bound spent is the caller's error, not the driver's"
    assert len(server.posts) == 1 + LostCarts().spares
    assert clock.now <= 600.0 + PollingSlack, "the limit counts from the first wait, spares included"
    message = str(raised.value)
    assert cart.url is not None and cart.url.rsplit("/", 1)[-1] in message
    assert "3 spare(s)" in message and "database is locked" in message, message
    assert cart.delete(still_staging=True) and sorted(server.deletes) == sorted(url for _, url in server.posts)


def test_spares_zero_never_posts_one(clock: Clock, tmp_path: Path) -> None:
    cart, server, _ = new_cart(clock, tmp_path, lambda n: None, LostCarts(spares=0), Timeouts(wait=300.0))
    with pytest.raises(CartTimeoutError, match="still 'staging' after 300 s"):
        wait_posting_spares(cart)
    assert len(server.posts) == 1


def test_a_spare_counts_from_the_newest_copy_and_the_jitter_spreads_clients(clock: Clock, tmp_path: Path) -> None:
    rule = LostCarts(after=100.0, per_file=0.0, jitter=0.5, spares=1)
    moments = set()
    for _ in range(20):
        clock.now = 0.0
        cart, server, _ = new_cart(clock, tmp_path, lambda n: None if n == 0 else 1.0, rule)
        wait_posting_spares(cart)
        moments.add(round(server.posts[1][0]))
    assert all(50 <= moment <= 150 for moment in moments)
    assert len(moments) > 5, "clients that lost their carts together do not post their spares together"
