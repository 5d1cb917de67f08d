"""Downloads as Celery tasks on real workers (tests/support/download_workers.py), against the real Cartd stack.

Three worker processes under two node names (a prefork pool of two
children, and a second worker of one) consume the tasks.  A fault proxy in
front of Cartd sees every request, so the carts each test created are known
and can be asked for afterwards (HEAD 404: none left behind).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery")

from support.download_workers import DownloadWorkers  # noqa: E402
from support.events import archive, event_for, event_with  # noqa: E402
from support.fault_proxy import Fault, FaultProxy  # noqa: E402
from support.helpers import assert_tree, cart_gone, incoming_leftovers, wait_until  # noqa: E402

from pacifica.downloader._incoming import HIDDEN_DIR  # noqa: E402
from pacifica.downloader._ledger import LEDGER_DIR  # noqa: E402
from pacifica.downloader.tasks import TASK_NAME, enqueue  # noqa: E402

#: Bound on any one task's wait for its result (seconds).
RESULT_WAIT = 180.0


@pytest.fixture(scope="module")
def workers(cartd_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DownloadWorkers]:
    pool = DownloadWorkers(cartd_stack, tmp_path_factory.mktemp("download-workers"))
    try:
        pool.start("pool", concurrency=2)
        pool.start("second", concurrency=1)
        yield pool
    finally:
        pool.stop()


def created_carts(proxy: FaultProxy, cartd_url: str) -> list[str]:
    """The Cartd URL of every cart POSTed through ``proxy``."""
    return sorted({cartd_url.rstrip("/") + request.path for request in proxy.requests_for("POST")})


def cart_records(location: Path) -> list[Path]:
    return sorted((location / HIDDEN_DIR / LEDGER_DIR).glob("run-*"))


def test_twenty_events_on_three_workers_into_one_location(
    cartd_stack: Any, workers: DownloadWorkers, tmp_path: Path
) -> None:
    shared = {f"shared/{index}.bin": os.urandom(4096 + index) for index in range(10)}
    shared_objects = archive(cartd_stack, shared)
    events, union = [], dict(shared)
    for number in range(20):
        own = {f"event{number}/{index}.bin": os.urandom(2048 + 97 * index) for index in range(3)}
        union.update(own)
        picked = [shared_objects[number % 10], shared_objects[(number + 3) % 10]]
        events.append(event_with([*archive(cartd_stack, own), *picked]))
    location = tmp_path / "area"
    with FaultProxy.for_url(cartd_stack.cart_url) as proxy:
        # The first event twice: two workers may well write the very same files at once.
        results = [
            enqueue(event, location, celery_app=workers.app, cart_api_url=proxy.url) for event in [*events, events[0]]
        ]
        manifests = [result.get(timeout=RESULT_WAIT) for result in results]
        carts = created_carts(proxy, cartd_stack.cart_url)
    assert_tree(location / "data", union)
    assert incoming_leftovers(location) == []
    for event, entries in zip([*events, events[0]], manifests):
        wanted = {
            (f"{obj['subdir']}/{obj['name']}", obj["hashsum"])
            for obj in event["data"]
            if obj.get("destinationTable") == "Files"
        }
        assert {
            (str(Path(entry["path"]).relative_to(location / "data")), entry["hashsum"]) for entry in entries
        } == wanted
    assert len(carts) >= 10, "each task made its own carts (shared files come from whichever task was first)"
    assert [url for url in carts if not cart_gone(url)] == []
    assert cart_records(location) == [], "every cart of every task deleted"
    nodes = {node for node in workers.workers if "succeeded" in workers.log(node)}
    assert nodes == {"pool", "second"}, "both workers took tasks"


def test_a_killed_child_is_redelivered_fetches_only_what_is_missing_and_its_carts_are_deleted(
    cartd_stack: Any, workers: DownloadWorkers, tmp_path: Path
) -> None:
    files = {f"big/{index}.bin": os.urandom(256 * 1024) for index in range(4)}
    objects = archive(cartd_stack, files)
    event = event_with(objects)
    location = tmp_path / "area"
    placed = location / "data" / "big"
    before = workers.count("started again after its worker died")
    # The first GET relays two files and part of the third, then nothing: the task is caught mid-stream.
    stall = Fault("GET", "silent", after=600 * 1024)
    with FaultProxy.for_url(cartd_stack.cart_url, [stall], max_hold=120) as proxy:
        result = enqueue(event, location, celery_app=workers.app, cart_api_url=proxy.url)
        wait_until(lambda: placed.is_dir() and len(list(placed.iterdir())) == 2, 60, "two files placed")
        wait_until(
            lambda: result.state == "PROGRESS" and result.info["files_done"] == 2,
            60,
            "the task's state says two files are done",
        )
        assert result.info["files_total"] == 4 and result.info["cart_url"].startswith(proxy.url)
        present = {f"big/{path.name}" for path in placed.iterdir()}
        (ledger,) = cart_records(location)
        pid = int(ledger.name.split("-")[2])  # run-<host>-<pid>-<id>: the child running the task
        dead_carts = [
            line[2:].strip().replace(proxy.url.rstrip("/"), cartd_stack.cart_url.rstrip("/"))
            for line in ledger.read_text().splitlines()
            if line.startswith("+ ")
        ]
        assert dead_carts, "the dead run wrote its cart down before its POST"
        os.kill(pid, signal.SIGKILL)
        manifest = result.get(timeout=RESULT_WAIT)
        posts = proxy.requests_for("POST")
    assert_tree(location / "data", files)
    assert incoming_leftovers(location) == []
    assert len(manifest) == 4
    assert workers.count("started again after its worker died") == before + 1, workers.logs()
    missing = {str(obj["_id"]) for obj in objects if f"{obj['subdir']}/{obj['name']}" not in present}
    assert len(posts) == 2 and {str(entry["id"]) for entry in json.loads(posts[1].body)["fileids"]} == missing
    assert [url for url in dead_carts if not cart_gone(url)] == [], "the dead attempt's carts are gone"
    assert cart_records(location) == []


def test_a_record_that_fails_validation_fails_the_task_at_once(workers: DownloadWorkers, tmp_path: Path) -> None:
    bad = event_for({"x.txt": b"x"})
    del bad["data"][-1]["hashsum"]
    # send_task, not enqueue(): enqueue would refuse the event before it reached a worker.
    result = workers.app.send_task(TASK_NAME, args=(bad, str(tmp_path / "area")))
    with pytest.raises(Exception) as caught:
        result.get(timeout=RESULT_WAIT)
    assert type(caught.value).__name__ == "InvalidInputError"
    assert "hashsum" in str(caught.value)
    assert result.state == "FAILURE"
    assert workers.count(rf"{TASK_NAME}\[{result.id}\] received") == 1, "run once, never retried"
    assert workers.count(rf"{TASK_NAME}\[{result.id}\] retry") == 0


def test_a_cart_service_that_refuses_is_retried_then_fails(workers: DownloadWorkers, tmp_path: Path) -> None:
    refusing = [
        Fault(method, "respond", count=None, status=404, body=b"no such service")
        for method in ("POST", "HEAD", "DELETE")
    ]  # nothing behind the proxy: every answer is its own
    with FaultProxy(1, refusing) as proxy:
        result = enqueue(
            event_for({"gone.txt": b"gone\n"}), tmp_path / "area", celery_app=workers.app, cart_api_url=proxy.url
        )
        with pytest.raises(Exception) as caught:
            result.get(timeout=RESULT_WAIT)
    assert type(caught.value).__name__ == "CartError"
    assert "refused to create the cart (HTTP 404)" in str(caught.value)
    assert workers.count(rf"{TASK_NAME}\[{result.id}\] received") == 3, "DOWNLOADER_MAX_RETRIES=2: three runs"


def test_the_command_line_enqueues_and_prints_the_task_id(
    cartd_stack: Any, workers: DownloadWorkers, tmp_path: Path
) -> None:
    files = {"cli/a.txt": b"from the shell\n"}
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(event_with(archive(cartd_stack, files))))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pacifica.downloader",
            "enqueue",
            str(event_file),
            "-d",
            str(tmp_path / "area"),
            "--filename",
            "run-1",
        ],
        env=workers.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    assert task_id in done.stderr and "queued the download" in done.stderr
    manifest = workers.app.AsyncResult(task_id).get(timeout=RESULT_WAIT)
    assert [entry["path"] for entry in manifest] == [str(tmp_path / "area" / "run-1" / "cli" / "a.txt")]
    assert_tree(tmp_path / "area" / "run-1", files)


def test_the_command_line_refuses_a_bad_event_without_queuing(workers: DownloadWorkers, tmp_path: Path) -> None:
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(event_for({"../x": b"x"})))
    done = subprocess.run(
        [sys.executable, "-m", "pacifica.downloader", "enqueue", str(event_file)],
        env=workers.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and "climbs out" in done.stderr and done.stdout == ""
