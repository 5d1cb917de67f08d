"""When the server side fails for real, the download still finishes: the stack's own processes are killed and
started again (its Celery worker, its HTTP server, its broker), and on SQLite several clients race each other
into "database is locked".  Carts Cartd loses are posted again (the lost-cart rule of ``Timeouts``).

These tests kill processes, so each module-scoped stack is their own, not the session's shared one.  No test
sleeps: a kill is triggered by the download's own progress reports, and every wait is bounded.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from cartd_stack import CartdStack, default_stack_venv_path, ensure_stack_venv
from helpers import assert_tree, incoming_leftovers
from support.events import make_event

from pacifica.downloader import CartAPI, Downloader, Progress, Timeouts

pytestmark = pytest.mark.stack

#: The lost-cart rule scaled down, so that a lost cart is posted again within seconds, not minutes.
FAST_LOST = Timeouts(lost=12.0, lost_floor=6.0, lost_factor=4.0, reposts=4)
#: Every download of these tests must end within this (its ``deadline``): the bound the tests hold it to.
DEADLINE = 240.0


def start_stack(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[CartdStack]:
    stack = CartdStack(tmp_path_factory.mktemp(f"faults-{database}"), ensure_stack_venv(default_stack_venv_path()),
                       database=database)
    with stack:
        yield stack


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CartdStack]:
    """A PostgreSQL stack of this module's own."""
    yield from start_stack(tmp_path_factory, "postgres")


@pytest.fixture(scope="module")
def sqlite_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CartdStack]:
    """A stack on Cartd's default database, SQLite."""
    yield from start_stack(tmp_path_factory, "sqlite")


def sample(prefix: str, count: int, size: int = 4096) -> dict[str, bytes]:
    return {f"{prefix}/f{index:03d}.bin": os.urandom(size) for index in range(count)}


class OnStaging:
    """A progress callback that notes the first cart reported staging (``staging`` is set then) and keeps every
    report."""

    def __init__(self) -> None:
        self.reports: list[Progress] = []
        self.cart_url = ""
        self.staging = threading.Event()

    def __call__(self, report: Progress) -> None:
        self.reports.append(report)
        if not self.staging.is_set() and report.phase == "staging" and report.cart_url:
            self.cart_url = report.cart_url
            self.staging.set()


def download_through(stack: CartdStack, tmp_path: Path, files: dict[str, bytes], fault: Callable[[str], None],
                     ) -> OnStaging:
    """Download ``files`` in a thread; once its cart stages, run ``fault(cart_url)`` in this one (a service
    started again must be started by a thread that outlives it: the stack's services die with the thread that
    started them); assert a complete, verified tree."""
    event = make_event(stack, files)
    watcher = OnStaging()
    errors: dict[str, BaseException] = {}
    down = Downloader(tmp_path, stack.cart_url, timeouts=FAST_LOST, progress=watcher)
    thread = threading.Thread(target=run_one, args=(down, event, errors, "download"), daemon=True)
    thread.start()
    assert watcher.staging.wait(60), "no cart was ever reported staging"
    fault(watcher.cart_url)
    thread.join(DEADLINE + 60)
    assert not thread.is_alive(), "the download outlived its deadline"
    assert errors == {}, errors
    assert_tree(tmp_path / "data", files)
    assert incoming_leftovers(tmp_path) == []
    return watcher


def run_one(down: Downloader, event: dict[str, Any], errors: dict[str, BaseException], name: str) -> None:
    """One download with the tests' deadline; its error, if any, into ``errors[name]``."""
    try:
        down.cloudevent(event, deadline=DEADLINE)
    except BaseException as err:  # noqa: BLE001 - asserted by the caller
        errors[name] = err


def still_staging(stack: CartdStack, cart_url: str) -> bool:
    return CartAPI(stack.cart_url).probe(cart_url) == "staging"


@pytest.mark.parametrize("service", ["worker", "redis"])
def test_the_worker_or_the_broker_killed_while_a_cart_stages_and_started_again(
    own_stack: CartdStack, tmp_path: Path, service: str
) -> None:
    """SIGKILL Cartd's Celery worker while it stages (its running and prefetched tasks are lost), or its
    broker once the cart's file tasks are queued (Redis, without persistence: they are lost), and start it
    again: the cart is suspected lost, posted again, and the download completes."""
    seen: list[bool] = []
    queued = r"get_files_locally\[[^]]+\] succeeded"  # it queues a task per file
    before = own_stack.log_matches("worker", queued)

    def kill_and_start(cart_url: str) -> None:
        if service == "redis":  # once this cart's file tasks are queued
            own_stack.wait_for_log("worker", queued, at_least=before + 1)
        seen.append(still_staging(own_stack, cart_url))
        own_stack.kill(service)
        own_stack.start_again(service)

    watcher = download_through(own_stack, tmp_path, sample(service, 150), kill_and_start)
    assert seen == [True], f"the {service} was not killed while the cart staged: the test tested nothing"
    assert max(report.reposts for report in watcher.reports) >= 1, "the lost cart was posted again"
    assert watcher.reports[-1].phase == "done"


def test_cartds_http_server_restarted_while_the_client_polls(own_stack: CartdStack, tmp_path: Path) -> None:
    def restart_cartd(cart_url: str) -> None:
        own_stack.kill("cartd")
        own_stack.start_again("cartd")

    watcher = download_through(own_stack, tmp_path, sample("h", 150), restart_cartd)
    assert watcher.reports[-1].phase == "done"


#: Clients at once, and the most rounds to run until SQLite's "database is locked" has been met.
CLIENTS = 4
MAX_ROUNDS = 6


def test_several_clients_on_sqlite_all_finish_though_cartd_loses_carts(
    sqlite_stack: CartdStack, tmp_path: Path
) -> None:
    """Four clients at once, round after round, until the worker's log shows SQLite's "database is locked" (the
    write that kills a cart's first task); every download ends verified within DEADLINE, none leaves a cart."""
    rounds = 0
    while rounds < MAX_ROUNDS:
        rounds += 1
        jobs = {f"r{rounds}c{client}": sample(f"r{rounds}c{client}", 30) for client in range(CLIENTS)}
        events = {name: make_event(sqlite_stack, files) for name, files in jobs.items()}
        errors: dict[str, BaseException] = {}
        threads = [
            threading.Thread(target=run_one, daemon=True, args=(
                Downloader(tmp_path / name, sqlite_stack.cart_url, timeouts=FAST_LOST), event, errors, name))
            for name, event in events.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE + 60)
        assert not any(thread.is_alive() for thread in threads), "a download outlived its deadline"
        assert errors == {}, f"round {rounds}: {errors}"
        for name, files in jobs.items():
            assert_tree(tmp_path / name / "data", files)
            assert incoming_leftovers(tmp_path / name) == [], "every cart deleted, its ledger gone"
        if "database is locked" in sqlite_stack.worker_log():
            break
    assert "database is locked" in sqlite_stack.worker_log(), (
        f"{rounds} rounds of {CLIENTS} clients never made Cartd's worker meet 'database is locked': "
        "this test tested nothing"
    )
