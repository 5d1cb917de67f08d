"""ServerPace: what the moments a client sees (POST returned, cart ready) tell of the server; a fake clock."""

from __future__ import annotations

import pytest
from support.helpers import Clock

from pacifica.downloader._pace import PREPOST_SHARE, SAFE_AFTER, SAFE_PER_FILE, ServerPace


def staged(pace: ServerPace, clock: Clock, turn: int, seconds: float) -> None:
    """Cart ``turn`` admitted and posted now, ready ``seconds`` later."""
    pace.admitted(turn)
    pace.posted(turn)
    clock.now += seconds
    pace.ended(turn, ready=True)


def test_nothing_is_expected_until_a_cart_got_ready() -> None:
    clock = Clock()
    pace = ServerPace([10, 20], 1, clock.monotonic)
    pace.admitted(0)
    pace.posted(0)
    assert pace.expected(0) is None and not pace.finishing(0)
    clock.now += 1000.0
    assert not pace.finishing(0), "a cart whose pace nobody knows counts as busy however long it stages"
    assert pace.busy() == 1
    pace.ended(0, ready=True)
    assert pace.expected(1) == pytest.approx(2000.0), "100 s per file, times the next cart's 20 files"


def test_a_failed_cart_teaches_nothing() -> None:
    clock = Clock()
    pace = ServerPace([10, 10], 1, clock.monotonic)
    pace.admitted(0)
    pace.posted(0)
    clock.now += 3.0
    pace.ended(0, ready=False)
    assert pace.expected(1) is None and not pace.staging


def test_a_cart_is_finishing_past_its_share_of_the_last_carts_time() -> None:
    clock = Clock()
    pace = ServerPace([10, 10, 10], 1, clock.monotonic)
    staged(pace, clock, 0, 100.0)  # 10 s per file: cart 1 should take 100 s
    pace.admitted(1)
    pace.posted(1)
    clock.now += PREPOST_SHARE * 100.0 - 0.1
    assert not pace.finishing(1) and pace.busy() == 1
    clock.now += 0.2
    assert pace.finishing(1) and pace.busy() == 0


def test_a_cart_posted_ahead_begins_when_the_one_before_it_is_ready() -> None:
    clock = Clock()
    pace = ServerPace([10, 10, 5], 1, clock.monotonic)
    staged(pace, clock, 0, 10.0)
    pace.admitted(1)
    pace.posted(1)
    clock.now += 8.0
    pace.admitted(2)
    pace.posted(2)
    assert pace.began(2) is None and pace.safe_at(2) is None, "cart 2 waits in the queue behind cart 1"
    clock.now += 4.0
    pace.ended(1, ready=True)  # 12 s for 10 files
    assert pace.began(2) == clock.now
    assert pace.expected(2) == pytest.approx(6.0)
    assert pace.safe_at(2) == pytest.approx(clock.now + SAFE_AFTER + 5 * SAFE_PER_FILE)


def test_safe_in_waits_for_the_last_staging_carts_first_task() -> None:
    clock = Clock()
    pace = ServerPace([100], 1, clock.monotonic)
    pace.admitted(0)
    assert pace.safe_in() is None, "its POST has not returned: when its first task ends is unknown"
    pace.posted(0)
    assert pace.safe_in() == pytest.approx(SAFE_AFTER + 100 * SAFE_PER_FILE)
    clock.now += 10.0
    assert pace.safe_in() is not None and pace.safe_in() <= 0  # type: ignore[operator]


def test_two_staging_at_once_each_cart_begins_after_the_one_two_before() -> None:
    clock = Clock()
    pace = ServerPace([5, 5, 5], 2, clock.monotonic)
    for turn in (0, 1):
        pace.admitted(turn)
        pace.posted(turn)
    assert pace.began(1) == 0.0, "two workers: the second cart begins at once"
    pace.admitted(2)
    pace.posted(2)
    assert pace.began(2) is None
    clock.now += 3.0
    pace.ended(0, ready=True)
    assert pace.began(2) == 3.0
    assert pace.created == 3


def test_a_cart_that_needed_a_spare_teaches_nothing_and_its_spares_first_task_is_waited_for() -> None:
    clock = Clock()
    pace = ServerPace([10, 10], 1, clock.monotonic)
    staged(pace, clock, 0, 5.0)  # 0.5 s per file
    pace.admitted(1)
    pace.posted(1)
    clock.now += 40.0
    assert pace.safe_in() is not None and pace.safe_in() <= 0  # type: ignore[operator]
    pace.spare_posted(1)
    assert pace.safe_in() == pytest.approx(SAFE_AFTER + 10 * SAFE_PER_FILE), "the spare has a first task too"
    clock.now += 3.0
    pace.ended(1, ready=True)
    assert pace.expected(1) == pytest.approx(5.0), "43 s for a cart that was lost is not the server's pace"
