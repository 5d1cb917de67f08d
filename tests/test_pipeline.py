"""Staging slots: carts take them in batch order, at most ``max_staging`` at once, cancelling frees waiters,
and the DELETE of a downloaded cart waits until it cannot hit the start of the cart that stages."""
from __future__ import annotations

import threading

import pytest

from pacifica.downloader import pipeline
from pacifica.downloader.pipeline import Cancelled, Slots


class WatchedSlots(Slots):
    """Slots that tell when a cart is waiting for its turn (the wait loop checks for cancellation)."""

    def __init__(self, max_staging: int) -> None:
        super().__init__(max_staging)
        self.waiting = threading.Event()

    def check(self) -> None:
        self.waiting.set()
        super().check()


def test_a_later_turn_waits_for_the_earlier_ones_even_when_a_slot_is_free() -> None:
    slots = WatchedSlots(1)
    order: list[int] = []

    def second() -> None:
        with slots.staging(1):
            order.append(1)

    thread = threading.Thread(target=second)
    thread.start()
    assert slots.waiting.wait(10), "turn 1 should wait for turn 0, not take the free slot"
    with slots.staging(0):
        order.append(0)
    thread.join(10)
    assert order == [0, 1]


def test_two_slots_let_two_turns_stage_at_once() -> None:
    slots = Slots(2)
    with slots.staging(0), slots.staging(1):
        pass  # both held at once: a third turn would wait
    with slots.staging(2):
        pass


def test_cancelling_releases_a_waiting_turn() -> None:
    slots = WatchedSlots(1)
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            with slots.staging(1):
                pass
        except Cancelled as err:
            errors.append(err)

    thread = threading.Thread(target=waiter)
    thread.start()
    assert slots.waiting.wait(10)
    slots.cancelled.set()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1


def test_a_cancelled_download_takes_no_new_slot() -> None:
    slots = Slots(1)
    slots.cancelled.set()
    with pytest.raises(Cancelled), slots.staging(0):
        pass


# -- requests that write to Cartd's database are kept away from a starting cart -------


class WaitingDeletion(Slots):
    """Slots that tell when a deletion is waiting for a safe moment."""

    def __init__(self, max_staging: int, sizes: list[int]) -> None:
        super().__init__(max_staging, sizes)
        self.deletion_waits = threading.Event()

    def _safe_in(self) -> float | None:
        self.deletion_waits.set()
        return super()._safe_in()


def test_a_deletion_runs_at_once_when_no_cart_stages() -> None:
    ran: list[str] = []
    Slots(1, [1, 1]).delete_between_carts(lambda: ran.append(threading.current_thread().name))
    assert ran == [threading.current_thread().name]


def test_a_deletion_waits_while_a_cart_is_being_created_and_runs_when_it_is_ready() -> None:
    slots = WaitingDeletion(1, [5, 5])
    ran: list[str] = []
    with slots.staging(0):
        record = lambda: ran.append(threading.current_thread().name)  # noqa: E731
        thread = threading.Thread(target=slots.delete_between_carts, args=(record,), daemon=True)
        thread.start()
        assert slots.deletion_waits.wait(10)
        assert ran == [], "deleted while the next cart's POST had not returned"
    thread.join(10)
    assert ran == [threading.current_thread().name], "the cart that got ready runs the waiting deletion"


def test_a_deletion_runs_once_the_staging_cart_is_past_its_first_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "SAFE_AFTER", 0.0)
    monkeypatch.setattr(pipeline, "SAFE_PER_FILE", 0.0)
    slots = Slots(1, [5, 5])
    ran: list[bool] = []
    with slots.staging(0):
        slots.created(0)
        slots.delete_between_carts(lambda: ran.append(True))  # returns once it ran, the cart still staging
        assert ran == [True]


def test_the_deletions_left_run_at_the_end() -> None:
    slots = WaitingDeletion(1, [5])
    ran: list[bool] = []
    with slots.staging(0):
        thread = threading.Thread(target=slots.delete_between_carts, args=(lambda: ran.append(True),), daemon=True)
        thread.start()
        assert slots.deletion_waits.wait(10)
        slots.run_deletions()
        assert ran == [True]
    thread.join(10)
    assert ran == [True], "run once only"


def test_a_ready_cart_waits_for_the_next_post(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "NEXT_CART_WAIT", 1000.0)
    slots = Slots(1, [5, 5, 5])
    slots.created(0)
    thread = threading.Thread(target=slots.wait_for_next_cart, args=(0,), daemon=True)
    thread.start()
    slots.created(1)
    thread.join(10)
    assert not thread.is_alive()
    slots.created(2)
    slots.wait_for_next_cart(1)  # cart 2 is created already: no wait
    slots.wait_for_next_cart(2)  # the last cart: nothing to wait for
