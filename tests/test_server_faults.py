"""When the server side fails for real, the download still finishes, with every default setting.

The stack's own processes are killed and started again (its Celery worker during a stage task, its broker
with tasks queued, its HTTP server for 10 s and 30 s, for good), several clients race each other into SQLite's
"database is locked", a client is SIGKILLed mid-stream and run again, and the archive is made slow but healthy.
A cart Cartd loses gets a spare (``LostCarts``); a restart is ridden out by the retry budget's patience.

Every download runs with the library's defaults and is bounded by its ``deadline``: 60 s + 0.2 s per file past
the moment a healthy server would have made it ready (a few seconds here), so 120 s.  A download that would not
finish within it ends in ``CartTimeoutError`` and fails the test.

These tests kill processes, so each module-scoped stack is their own: Cartd's default database, SQLite, for
every scenario, and PostgreSQL as well for the lost carts.  Cartd reaches its archive through a fault proxy
(``stack.archive_proxy``), which answers stage requests late where a test needs a stage task under way, or a
slow archive.  No test sleeps to synchronise: a fault is triggered by the download's progress reports, the
worker's log or the archive proxy's request log; only an outage is held for its length.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.cartd_stack import CartdStack, default_stack_venv_path, ensure_stack_venv
from support.child import file_ids, run_and_kill
from support.events import make_event
from support.fault_proxy import Fault
from support.helpers import assert_tree, cart_gone, incoming_leftovers, wait_until
from support.sessions import RecordingSession

from pacifica.downloader import Downloader, LostCarts, Progress, Retry, TransferError

pytestmark = pytest.mark.stack

#: The bound every download is held to: 60 s + 0.2 s per file past its healthy time (a few seconds here).
DEADLINE = 120.0
#: Each stage request answered this late, so that a stage task is under way most of the time.
STAGE_DELAY = 0.5


def start_stack(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[CartdStack]:
    stack = CartdStack(
        tmp_path_factory.mktemp(f"faults-{database}"),
        ensure_stack_venv(default_stack_venv_path()),
        database=database,
        archive_proxy=True,
    )
    with stack:
        yield stack


@pytest.fixture(scope="module")
def sqlite_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CartdStack]:
    """A stack on Cartd's default database, SQLite."""
    yield from start_stack(tmp_path_factory, "sqlite")


@pytest.fixture(scope="module")
def postgres_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CartdStack]:
    yield from start_stack(tmp_path_factory, "postgres")


@pytest.fixture(params=["sqlite", "postgres"])
def stack(request: pytest.FixtureRequest) -> CartdStack:
    """Each database's stack in turn."""
    found: CartdStack = request.getfixturevalue(f"{request.param}_stack")
    return found


@contextlib.contextmanager
def archive_answers_late(stack: CartdStack, seconds: float) -> Iterator[None]:
    """Make the archive answer every stage request (a POST) ``seconds`` late, for the ``with`` block."""
    stack.archive_proxy.faults = [Fault("POST", "late", count=None, interval=seconds)]
    try:
        yield
    finally:
        stack.archive_proxy.faults = []


def stage_under_way(stack: CartdStack) -> bool:
    """Whether a stage request of Cartd's worker is with the archive right now."""
    return any(not request.finished.is_set() for request in stack.archive_proxy.requests_for("POST"))


def sample(prefix: str, count: int, size: int = 4096) -> dict[str, bytes]:
    return {f"{prefix}/f{index:03d}.bin": os.urandom(size) for index in range(count)}


class FailedTries(logging.Handler):
    """Counts the tries the transport logs as failed (``staging`` reports are the download's own)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.seen.set()


@pytest.fixture()
def failed_tries() -> Iterator[FailedTries]:
    handler = FailedTries()
    logger = logging.getLogger("pacifica.downloader._transport")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@dataclass
class Run:
    """One download in a thread of its own, with every default but its deadline."""

    location: Path
    files: dict[str, bytes]
    event: dict[str, Any]
    cart_url: str
    session: RecordingSession = field(default_factory=RecordingSession)
    reports: list[Progress] = field(default_factory=list)
    staging: threading.Event = field(default_factory=threading.Event)
    deadline: float = DEADLINE
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def progress(self, report: Progress) -> None:
        self.reports.append(report)
        if report.phase == "staging" and report.cart_url:
            self.staging.set()

    def start(self) -> Run:
        def run() -> None:
            try:
                Downloader(self.location, self.cart_url, session=self.session, progress=self.progress).cloudevent(
                    self.event, deadline=self.deadline
                )
            except BaseException as err:  # noqa: BLE001 - asserted by finish()
                self.error = err

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(self.deadline + 60)
        assert not self.thread.is_alive(), "the download outlived its deadline"

    def finish(self) -> None:
        """The download ended verified, within its deadline, and left no cart of any copy on the server."""
        self.join()
        assert self.error is None, repr(self.error)
        assert_tree(self.location / "data", self.files)
        assert incoming_leftovers(self.location) == [], "every cart deleted, its ledger gone"
        assert_no_cart_left(self.session)

    @property
    def spares(self) -> int:
        return max((report.spares for report in self.reports), default=0)


def new_run(stack: CartdStack, location: Path, files: dict[str, bytes]) -> Run:
    return Run(location, files, make_event(stack, files), stack.cart_url)


def assert_no_cart_left(session: RecordingSession) -> None:
    posted = set(session.carts())
    left = sorted(url for url in posted if not cart_gone(url))
    assert left == [], f"carts left on the server: {left}"


# -- carts Cartd loses ------------------------------------------------------------------------------------------------


def test_the_worker_killed_during_a_stage_task_and_started_again(stack: CartdStack, tmp_path: Path) -> None:
    """SIGKILL Cartd's Celery worker while a stage task is with the archive: that task and the ones it had
    prefetched are lost, and the cart stays staging for ever; its spare finishes the download."""
    with archive_answers_late(stack, STAGE_DELAY):
        run = new_run(stack, tmp_path, sample("worker", 31)).start()
        assert run.staging.wait(60), "no cart was ever reported staging"
        wait_until(lambda: stage_under_way(stack), 60, "a stage task under way")
        stack.kill("worker")
        stack.start_again("worker")
        run.finish()
    assert run.spares >= 1, "the lost cart got a spare: the test tested the rule"
    assert run.reports[-1].phase == "done"


def test_the_broker_restarted_with_tasks_queued(stack: CartdStack, tmp_path: Path) -> None:
    """Restart Redis (no persistence) once the cart's stage tasks are queued: they are lost with it."""
    queued = r"get_files_locally\[[^]]+\] succeeded"  # it queues a task per file
    before = stack.log_matches("worker", queued)
    with archive_answers_late(stack, STAGE_DELAY):
        run = new_run(stack, tmp_path, sample("broker", 31)).start()
        stack.wait_for_log("worker", queued, at_least=before + 1)
        wait_until(lambda: stage_under_way(stack), 60, "a stage task under way")
        stack.kill("redis")
        stack.start_again("redis")
        run.finish()
    assert run.spares >= 1, "the lost cart got a spare: the test tested the rule"


#: Clients at once, and the most rounds to run until SQLite's "database is locked" has been met.
CLIENTS = 4
MAX_ROUNDS = 6


def test_several_clients_on_sqlite_all_finish_though_cartd_loses_carts(
    sqlite_stack: CartdStack, tmp_path: Path
) -> None:
    """Four clients at once, round after round, until the worker's log shows SQLite's "database is locked" (the
    write that kills a cart's first task): every download ends verified within its deadline, none leaves a
    cart."""
    rounds = 0
    while rounds < MAX_ROUNDS:
        rounds += 1
        runs = [
            new_run(sqlite_stack, tmp_path / f"r{rounds}c{client}", sample(f"r{rounds}c{client}", 30)).start()
            for client in range(CLIENTS)
        ]
        for run in runs:
            run.finish()
        if "database is locked" in sqlite_stack.worker_log():
            break
    assert "database is locked" in sqlite_stack.worker_log(), (
        f"{rounds} rounds of {CLIENTS} clients never made Cartd's worker meet 'database is locked': "
        "this test tested nothing"
    )


def test_a_client_killed_mid_stream_is_run_again_on_sqlite(sqlite_stack: CartdStack, tmp_path: Path) -> None:
    """200 files of 256 KiB: the first run is SIGKILLed mid-stream (its cart left behind, in its ledger); the
    second run deletes that cart, posts the files still missing, and finishes within its deadline."""
    files = sample("rerun", 200, 256 * 1024)
    event = make_event(sqlite_stack, files)
    location = tmp_path / "dl"
    paused = run_and_kill(location, sqlite_stack.cart_url, event)
    assert not cart_gone(paused["cart_url"]), "the killed run could not delete its cart"
    run = Run(location, files, event, sqlite_stack.cart_url).start()
    run.finish()
    assert cart_gone(paused["cart_url"])
    _, body = run.session.posts()[0]
    assert len(body["fileids"]) < len(files), "only the files still missing were posted"
    assert set(file_ids(event).values()) >= {str(entry["id"]) for entry in body["fileids"]}


# -- restarts ridden out ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("outage", [10.0, 30.0])
@pytest.mark.parametrize("during", ["the POST", "the polls"])
def test_cartds_http_server_stopped_and_started_again(
    sqlite_stack: CartdStack, tmp_path: Path, failed_tries: FailedTries, during: str, outage: float
) -> None:
    """Cartd's HTTP server gone for ``outage`` seconds, while the client posts its cart or polls it: the refused
    tries are retried for as long as the patience since the last answer lasts (60 s), not a number of tries."""
    stop_held = threading.Event()  # never set: the outage is held for its length
    with archive_answers_late(sqlite_stack, STAGE_DELAY):
        run = new_run(sqlite_stack, tmp_path, sample("h", 30))
        run.deadline = DEADLINE + outage  # a healthy server would have been ready that much later
        if during == "the POST":
            sqlite_stack.kill("cartd")
            run.start()
        else:
            run.start()
            assert run.staging.wait(60), "no cart was ever reported staging"
            sqlite_stack.kill("cartd")
        assert failed_tries.seen.wait(60), "the client never met the stopped server"
        stop_held.wait(outage)
        sqlite_stack.start_again("cartd")
        run.finish()
    refused = [message for message in failed_tries.messages if "ConnectionError" in message]
    assert refused, failed_tries.messages
    method = "POST" if during == "the POST" else "HEAD"
    assert any(message.startswith(method) for message in refused), refused


def test_cartd_gone_for_good_ends_in_transfer_error_within_the_patience(
    sqlite_stack: CartdStack, tmp_path: Path
) -> None:
    """Cartd's HTTP server stopped while the client polls, and not started again: TransferError, every attempt
    listed, within Timeouts.progress (60 s) plus one backoff (Retry.backoff_max, 10 s) of its last answer.  The
    download's deadline is 90 s from its start: had the bound not held, CartTimeoutError would have come."""
    run = new_run(sqlite_stack, tmp_path, sample("gone", 30))
    try:
        with archive_answers_late(sqlite_stack, 2.0):  # 60 s of staging: it is polled when Cartd goes
            run.start()
            assert run.staging.wait(60), "no cart was ever reported staging"
            sqlite_stack.kill("cartd")
            run.join()
    finally:
        sqlite_stack.start_again("cartd")
    error = run.error
    assert isinstance(error, TransferError), repr(error)
    assert "no sign of progress from the server for 60 s" in str(error), str(error)
    assert len(error.attempts) >= 3 and all("ConnectionError" in reason for reason in error.attempts), error.attempts
    assert f"({len(error.attempts)} attempts)" in str(error)
    assert Retry().backoff_max == 10.0 and DEADLINE > 60 + 10


# -- a slow, healthy server ---------------------------------------------------------------------------------------


def test_a_slow_healthy_archive_keeps_its_first_cart(sqlite_stack: CartdStack, tmp_path: Path) -> None:
    """Each file takes 20 s to stage (one Cartd worker: a 10-file cart needs 200 s).  Spares are posted, at most
    LostCarts.spares, each behind the first cart in the server's queue; the first cart is the one downloaded, its
    files are not staged again from scratch, and every spare is deleted."""
    files = sample("slow", 10)
    with archive_answers_late(sqlite_stack, 20.0):
        run = new_run(sqlite_stack, tmp_path, files)
        run.deadline = 20.0 * len(files) + 60 + 0.2 * len(files) + 10  # its healthy time, plus the bound
        first_stage = len(sqlite_stack.archive_proxy.requests_for("POST"))
        run.start()
        run.join()
    run.finish()
    posted = run.session.carts()
    gets = sorted({url for method, url in run.session.sent if method == "GET"})
    assert [url.split("?")[0] for url in gets] == [posted[0]], "the first cart is the one downloaded"
    assert 1 <= run.spares <= LostCarts().spares and len(set(posted)) == 1 + run.spares
    staged = len(sqlite_stack.archive_proxy.requests_for("POST")) - first_stage
    assert staged < 2 * len(files), f"{staged} stage requests for {len(files)} files: staged again from scratch"
