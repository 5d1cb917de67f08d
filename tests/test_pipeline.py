"""Staging slots: carts take them in batch order, at most ``max_staging`` at once, and cancelling frees waiters."""
from __future__ import annotations

import threading

import pytest

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
