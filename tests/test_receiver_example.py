"""The README's web-service example (examples/receiver.py), end to end: real workers, the real stack.

The receiver queues each event and answers 202 with the task's id at once;
the download workers of tests/download_workers.py download it.
"""
from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from support.events import make_event

cherrypy = pytest.importorskip("cherrypy")
pytest.importorskip("celery")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from download_workers import DownloadWorkers  # noqa: E402
from receiver import Receiver  # noqa: E402

#: Bound on waiting for a queued download (seconds).
RESULT_WAIT = 120.0


@pytest.fixture(scope="module")
def incoming(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("receiver") / "incoming"


@pytest.fixture(scope="module")
def workers(cartd_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DownloadWorkers]:
    pool = DownloadWorkers(cartd_stack, tmp_path_factory.mktemp("receiver-workers"))
    try:
        pool.start("receiver-worker", concurrency=1)
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def receiver(workers: DownloadWorkers, incoming: Path) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cherrypy.config.update({"server.socket_host": "127.0.0.1", "server.socket_port": port,
                            "log.screen": False, "engine.autoreload.on": False, "checker.on": False})
    cherrypy.tree.mount(Receiver(str(incoming), workers.app), "/")
    cherrypy.engine.start()
    cherrypy.engine.wait(cherrypy.engine.states.STARTED)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        cherrypy.engine.stop()  # not exit(): that may end the whole process
        cherrypy.tree.apps.clear()


def test_an_event_is_queued_at_once_and_downloaded(
    receiver: str, workers: DownloadWorkers, cartd_stack: Any, incoming: Path
) -> None:
    files = {"x/one.txt": b"one\n", "two.txt": b"two\n"}
    event = make_event(cartd_stack, files)
    answer = requests.post(receiver, json=event, timeout=60)
    assert answer.status_code == 202
    task = answer.json()["task"]
    assert answer.headers["Location"] == f"/status/{task}"
    manifest = workers.app.AsyncResult(task).get(timeout=RESULT_WAIT)
    folder = incoming / event["eventID"]
    found = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert found == files
    assert sorted(entry["path"] for entry in manifest) == sorted(str(folder / path) for path in files)
    status = requests.get(receiver + answer.headers["Location"].lstrip("/"), timeout=60).json()
    assert status["state"] == "SUCCESS" and len(status["files"]) == 2


def test_binary_mode_event(receiver: str, workers: DownloadWorkers, cartd_stack: Any, incoming: Path) -> None:
    event = make_event(cartd_stack, {"b.txt": b"binary\n"})
    headers = {"ce-specversion": "1.0", "ce-id": "bin-1", "ce-type": "org.pacifica.metadata.ingest",
               "ce-source": "/pacifica/metadata/ingest", "Content-Type": "application/json"}
    answer = requests.post(receiver, data=json.dumps(event["data"]), headers=headers, timeout=60)
    assert answer.status_code == 202
    workers.app.AsyncResult(answer.json()["task"]).get(timeout=RESULT_WAIT)
    assert (incoming / "bin-1" / "b.txt").read_bytes() == b"binary\n"


def test_bad_event_is_a_400_and_writes_nothing(receiver: str, incoming: Path) -> None:
    bad = {"data": [{"destinationTable": "Files", "_id": 1, "name": "../x", "hashtype": "sha1",
                     "hashsum": "0" * 40}]}
    answer = requests.post(receiver, json=bad, timeout=60)
    assert answer.status_code == 400 and "climbs out" in answer.text
    assert not (incoming / "data").exists(), "nothing written for a refused event"
