"""The scheduler: carts take staging slots in batch order, at most ``max_staging`` at once, cancelling frees
waiters, and the DELETE of a downloaded cart waits until it cannot hit the start of the cart that stages."""

from __future__ import annotations

import threading

import pytest
from support.helpers import Clock

from pacifica.downloader import _pace as pace
from pacifica.downloader import _scheduler as scheduler
from pacifica.downloader._exceptions import Cancelled
from pacifica.downloader._scheduler import Scheduler as Slots


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
    Slots(1, [1, 1]).write_when_safe(lambda: ran.append(threading.current_thread().name))
    assert ran == [threading.current_thread().name]


def test_a_deletion_waits_while_a_cart_is_being_created_and_runs_when_it_is_ready() -> None:
    slots = WaitingDeletion(1, [5, 5])
    ran: list[str] = []
    with slots.staging(0):
        record = lambda: ran.append(threading.current_thread().name)  # noqa: E731
        thread = threading.Thread(target=slots.write_when_safe, args=(record,), daemon=True)
        thread.start()
        assert slots.deletion_waits.wait(10)
        assert ran == [], "deleted while the next cart's POST had not returned"
    thread.join(10)
    assert ran == [threading.current_thread().name], "the cart that got ready runs the waiting deletion"


def test_after_the_last_cart_a_waiting_deletion_runs_in_its_own_thread_not_before_the_transfer() -> None:
    slots = WaitingDeletion(1, [5, 5])
    ran: list[str] = []
    with slots.staging(0):
        slots.created(0)
    with slots.staging(1):  # the last cart
        slots.created(1)
        thread = threading.Thread(
            target=slots.write_when_safe,
            args=(lambda: ran.append(threading.current_thread().name),),
            name="deleter",
            daemon=True,
        )
        thread.start()
        assert slots.deletion_waits.wait(10)
        assert ran == [], "deleted while the last cart's POST may still be settling"
    thread.join(10)
    assert ran == ["deleter"], "the last cart's transfer does not wait for the deletion; its thread runs it"


def test_a_deletion_runs_once_the_staging_cart_is_past_its_first_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pace, "SAFE_AFTER", 0.0)
    monkeypatch.setattr(pace, "SAFE_PER_FILE", 0.0)
    slots = Slots(1, [5, 5])
    ran: list[bool] = []
    with slots.staging(0):
        slots.created(0)
        slots.write_when_safe(lambda: ran.append(True))  # returns once it ran, the cart still staging
        assert ran == [True]


def test_the_deletions_left_run_at_the_end() -> None:
    slots = WaitingDeletion(1, [5])
    ran: list[bool] = []
    with slots.staging(0):
        thread = threading.Thread(target=slots.write_when_safe, args=(lambda: ran.append(True),), daemon=True)
        thread.start()
        assert slots.deletion_waits.wait(10)
        slots.run_pending_writes()
        assert ran == [True]
    thread.join(10)
    assert ran == [True], "run once only"


def test_a_ready_cart_waits_for_the_next_post(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler, "NEXT_CART_WAIT", 1000.0)
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


# -- posting ahead: the next cart is created while the one before it is in its last wave --------


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The slots' clock, moved by hand (their waits still wake every 0.1 s of real time)."""
    clock = Clock()
    monkeypatch.setattr(scheduler, "time", clock)
    monkeypatch.setattr(pace, "SAFE_AFTER", 1.0)
    monkeypatch.setattr(pace, "SAFE_PER_FILE", 0.0)
    return clock


class SlotWatch(Slots):
    """Slots that count how often a waiting turn looked for room."""

    def __init__(self, max_staging: int, sizes: list[int]) -> None:
        super().__init__(max_staging, sizes)
        self.looked = threading.Semaphore(0)

    def _has_room(self) -> bool:
        self.looked.release()
        return super()._has_room()


def stage(slots: Slots, turn: int, clock: Clock, seconds: float) -> None:
    """Stage cart ``turn``: created now, ready ``seconds`` later."""
    with slots.staging(turn):
        slots.created(turn)
        clock.now += seconds


def take_slot(slots: Slots, turn: int, got: threading.Event, release: threading.Event) -> threading.Thread:
    """Wait for cart ``turn``'s slot in a thread; set ``got`` once held, hold it until ``release``."""

    def run() -> None:
        with slots.staging(turn):
            slots.created(turn)
            got.set()
            release.wait(10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_the_first_cart_holds_its_slot_until_it_is_ready(clock: Clock) -> None:
    slots = SlotWatch(1, [10, 10])
    got, release = threading.Event(), threading.Event()
    with slots.staging(0):
        slots.created(0)
        clock.now = 1000.0  # however long it stages: no cart's time is known yet
        thread = take_slot(slots, 1, got, release)
        for _ in range(3):
            assert slots.looked.acquire(timeout=10)
        assert not got.is_set(), "cart 1 was created while cart 0, whose time nobody knows, was staging"
    assert got.wait(10)
    release.set()
    thread.join(10)


def test_a_cart_in_its_last_wave_lets_the_next_one_be_created(clock: Clock) -> None:
    slots = SlotWatch(1, [10, 10, 10])
    stage(slots, 0, clock, 10.0)  # 1 s per file
    got, release = threading.Event(), threading.Event()
    with slots.staging(1):
        slots.created(1)  # begins at once: cart 0 is ready; expected to take 10 s
        thread = take_slot(slots, 2, got, release)
        clock.now += pace.PREPOST_SHARE * 10.0 - 0.5
        for _ in range(3):
            assert slots.looked.acquire(timeout=10)
        assert not got.is_set(), "cart 2 was created before cart 1 reached its last wave"
        clock.now += 1.0
        assert got.wait(10), "cart 2 was not created while cart 1 was in its last wave"
    release.set()
    thread.join(10)


def test_a_cart_posted_ahead_begins_when_the_one_before_it_is_ready(clock: Clock) -> None:
    slots = Slots(1, [10, 10, 5])
    stage(slots, 0, clock, 10.0)
    began = threading.Event()
    with slots.staging(1):
        slots.created(1)
        clock.now += 8.0

        def ahead() -> None:
            with slots.staging(2):
                slots.created(2)
                slots.wait_to_begin(2)
                began.set()
                clock.now += 5.0

        thread = threading.Thread(target=ahead, daemon=True)
        thread.start()
        assert not began.wait(0.3), "a cart posted ahead began before the cart before it was ready"
        clock.now += 4.0  # cart 1 took 12 s: 1.2 s per file
    assert began.wait(10)
    thread.join(10)
    assert slots.expected(2) == pytest.approx(5.0), "cart 2's time counts from when it began, not its POST"


def test_a_deletion_waits_for_the_first_task_of_a_cart_posted_ahead(clock: Clock) -> None:
    slots = WaitingDeletion(1, [10, 10, 10])
    stage(slots, 0, clock, 10.0)  # 1 s per file
    created, ready = threading.Event(), threading.Event()

    def cart_1() -> None:
        with slots.staging(1):
            slots.created(1)
            created.set()
            ready.wait(10)

    first = threading.Thread(target=cart_1, daemon=True)
    first.start()
    assert created.wait(10)
    clock.now += 8.0  # cart 1 is in its last wave
    got, release = threading.Event(), threading.Event()
    second = take_slot(slots, 2, got, release)
    assert got.wait(10), "cart 2 was not posted ahead"
    ran: list[float] = []
    deleter = threading.Thread(target=slots.write_when_safe, args=(lambda: ran.append(clock.now),), daemon=True)
    deleter.start()
    assert slots.deletion_waits.wait(10)
    ready.set()  # cart 1 is ready: Cartd starts on cart 2 now, its first task may run for SAFE_AFTER
    first.join(10)
    slots.deletion_waits.clear()
    assert slots.deletion_waits.wait(10)
    assert ran == [], "deleted while the cart posted ahead could be in its first task"
    clock.now += 1.5
    deleter.join(10)
    assert ran == [clock.now]
    release.set()
    second.join(10)


def test_a_cart_is_followed_once_the_carts_that_take_its_place_are_created() -> None:
    slots = Slots(2, [5, 5, 5, 5])
    slots.created(0)
    slots.created(1)
    zero = slots.followed(0)
    assert not zero.is_set(), "with two staging at once, cart 2 takes cart 0's place on the server"
    slots.created(2)
    assert zero.is_set() and slots.followed(0).is_set()
    assert not slots.followed(1).is_set()
