"""Several downloads into the same location at once, against the real Cartd stack.

Two downloaders with the same event and a third with an overlapping but
different one run together, as threads of one process and as separate
processes.  Each must finish without error, every file must hold its
verified content, and no incoming folder or partial file may be left.

The downloads are started together with a barrier (threads) or a "go" line
on stdin (processes), never with sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from support.events import make_event
from support.fault_proxy import Fault, FaultProxy
from support.helpers import assert_tree, incoming_leftovers

from pacifica.downloader import Downloader, Retry, Timeouts

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUTS = Timeouts(connect=5.0, read=10.0, wait=60.0, stall=10.0)
RETRY = Retry(attempts=3, backoff=0.05)
#: Bound on any one download of these tests (seconds).
DEADLINE = 90.0


def _files(prefix: str, count: int, size: int) -> dict[str, bytes]:
    return {f"{prefix}/{index}.bin": os.urandom(size + index) for index in range(count)}


def overlapping_events(stack: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes], dict[str, bytes]]:
    """Event A (8 files) and event B (4 of A's files plus 3 of its own); return both and their file sets."""
    shared = _files("shared", 8, 150_000)
    own = _files("own", 3, 90_000)
    event_a = make_event(stack, shared)
    event_b = make_event(stack, own)
    a_records = [obj for obj in event_a["data"] if obj.get("destinationTable") == "Files"]
    event_b["data"].extend(dict(obj) for obj in a_records[:4])
    files_b = dict(own)
    for obj in a_records[:4]:
        path = "{}/{}".format(obj["subdir"], obj["name"])
        files_b[path] = shared[path]
    return event_a, event_b, shared, files_b


def assert_clean(location: Path, files: dict[str, bytes]) -> None:
    assert_tree(location / "data", files)
    assert incoming_leftovers(location) == [], "a incoming folder or partial file was left behind"
    assert not [path for path in location.rglob("*.part")], "no partial file anywhere"


# -- threads ----------------------------------------------------------------------


def _run_threads(jobs: list[tuple[str, dict[str, Any]]], location: Path) -> list[Any]:
    """Run ``Downloader(location, url).cloudevent(event)`` for each (url, event) together; return results."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    timeline: list[tuple[int, str]] = []

    def work(slot: int, url: str, event: dict[str, Any]) -> None:
        try:
            down = Downloader(
                location,
                url,
                timeouts=TIMEOUTS,
                retry=RETRY,
                progress=lambda report: timeline.append((slot, report.phase)),
            )
            barrier.wait(timeout=30)
            results[slot] = down.cloudevent(event, deadline=DEADLINE)
        except BaseException as err:  # noqa: BLE001 - handed to the test, which reports it
            results[slot] = err

    threads = [
        threading.Thread(target=work, args=(slot, url, event), name=f"download-{slot}", daemon=True)
        for slot, (url, event) in enumerate(jobs)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE + 30)
    assert not any(thread.is_alive() for thread in threads), "a download thread did not finish"
    # They really ran at once: every download had started before any one of them was done.
    first_done = min((index for index, (_, phase) in enumerate(timeline) if phase == "done"), default=None)
    if first_done is not None:
        started = {slot for slot, phase in timeline[:first_done] if phase == "validating"}
        assert started == set(range(len(jobs))), timeline[: first_done + 1]
    return results


def test_two_threads_same_event_and_a_third_overlapping(cartd_stack: Any, tmp_path: Path) -> None:
    event_a, event_b, files_a, files_b = overlapping_events(cartd_stack)
    url = cartd_stack.cart_url
    results = _run_threads([(url, event_a), (url, event_a), (url, event_b)], tmp_path)
    errors = [result for result in results if isinstance(result, BaseException)]
    assert errors == [], errors
    expected_a = sorted(str(tmp_path / "data" / path) for path in files_a)
    assert sorted(results[0]) == sorted(results[1]) == expected_a
    assert sorted(results[2]) == sorted(str(tmp_path / "data" / path) for path in files_b)
    assert_clean(tmp_path, dict(files_a, **files_b))


def test_threads_one_through_a_broken_stream(cartd_stack: Any, tmp_path: Path) -> None:
    """Two downloaders with the same event at once, one of them through a proxy that resets its stream:
    both finish with the right files (one restarts, skipping what it verified)."""
    event_a, _, files_a, _ = overlapping_events(cartd_stack)
    with FaultProxy.for_url(cartd_stack.cart_url, [Fault("GET", "reset", after=400_000)]) as proxy:
        results = _run_threads([(proxy.url, event_a), (cartd_stack.cart_url, event_a)], tmp_path)
        assert proxy.count("GET") == 2, "the proxied download restarted once"
        assert proxy.errors == []
    errors = [result for result in results if isinstance(result, BaseException)]
    assert errors == [], errors
    assert_clean(tmp_path, files_a)


def test_bundled_and_plain_threads_same_location(cartd_stack: Any, tmp_path: Path) -> None:
    """A bundled cart (top folder = cart uid) and a plain one writing the same files at once."""
    event_a, _, files_a, _ = overlapping_events(cartd_stack)
    results = _run_threads([(cartd_stack.bundle_cart_url, event_a), (cartd_stack.cart_url, event_a)], tmp_path)
    errors = [result for result in results if isinstance(result, BaseException)]
    assert errors == [], errors
    assert_clean(tmp_path, files_a)


# -- processes ---------------------------------------------------------------------

CHILD = r"""
import json, sys
from pacifica.downloader import Downloader, Retry, Timeouts, DownloaderError

location, url, event_file, deadline = sys.argv[1:5]
event = json.loads(open(event_file).read())
down = Downloader(location, url, timeouts=Timeouts(connect=5, read=10, wait=60, stall=10),
                  retry=Retry(attempts=3, backoff=0.05))
print("ready", flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(3)
try:
    written = down.cloudevent(event, deadline=float(deadline))
except DownloaderError as err:
    print(json.dumps({"error": type(err).__name__, "message": str(err)}), flush=True)
    sys.exit(1)
print(json.dumps({"written": written}), flush=True)
"""


def _run_processes(jobs: list[tuple[str, dict[str, Any]]], location: Path, scratch: Path) -> list[dict[str, Any]]:
    """Run one child process per (url, event), released together; return each child's JSON answer."""
    scratch.mkdir()
    script = scratch / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    children: list[subprocess.Popen[str]] = []
    try:
        for slot, (url, event) in enumerate(jobs):
            event_file = scratch / f"event-{slot}.json"
            event_file.write_text(json.dumps(event))
            children.append(
                subprocess.Popen(
                    [sys.executable, str(script), str(location), url, str(event_file), str(DEADLINE)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                    cwd=str(scratch),
                )
            )
        for child in children:  # every child has imported the library and built its downloader
            assert child.stdout is not None
            line = child.stdout.readline()
            if line.strip() != "ready":
                _, err = child.communicate(timeout=30)
                pytest.fail(f"a child did not get ready: {line!r}\n{err}")
        answers: list[dict[str, Any]] = []
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        for child in children:
            out, err = child.communicate(timeout=DEADLINE + 30)
            last: str | None = out.strip().splitlines()[-1] if out.strip() else None
            answers.append(dict(json.loads(last) if last else {}, returncode=child.returncode, stderr=err))
        return answers
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)


def test_two_processes_same_event_and_a_third_overlapping(cartd_stack: Any, tmp_path: Path) -> None:
    location = tmp_path / "down"
    event_a, event_b, files_a, files_b = overlapping_events(cartd_stack)
    url = cartd_stack.cart_url
    answers = _run_processes([(url, event_a), (url, event_a), (url, event_b)], location, tmp_path / "scratch")
    failed = [answer for answer in answers if answer["returncode"] != 0]
    assert failed == [], failed
    expected_a = sorted(str(location / "data" / path) for path in files_a)
    assert sorted(answers[0]["written"]) == sorted(answers[1]["written"]) == expected_a
    assert sorted(answers[2]["written"]) == sorted(str(location / "data" / path) for path in files_b)
    assert_clean(location, dict(files_a, **files_b))
