"""The README's web-service example (examples/receiver.py), end to end on the real stack."""
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

from pacifica.downloader import Downloader

cherrypy = pytest.importorskip("cherrypy")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from receiver import Receiver  # noqa: E402


@pytest.fixture(scope="module")
def incoming(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("receiver") / "incoming"


@pytest.fixture(scope="module")
def receiver(cartd_stack: Any, incoming: Path) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cherrypy.config.update({"server.socket_host": "127.0.0.1", "server.socket_port": port,
                            "log.screen": False, "engine.autoreload.on": False, "checker.on": False})
    cherrypy.tree.mount(Receiver(Downloader(incoming, cartd_stack.cart_url)), "/")
    cherrypy.engine.start()
    cherrypy.engine.wait(cherrypy.engine.states.STARTED)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        cherrypy.engine.stop()  # not exit(): that may end the whole process
        cherrypy.tree.apps.clear()


def test_structured_event_as_notifications_posts_it(receiver: str, cartd_stack: Any, incoming: Path) -> None:
    files = {"x/one.txt": b"one\n", "two.txt": b"two\n"}
    event = make_event(cartd_stack, files)
    answer = requests.post(receiver, json=event, timeout=60)
    assert answer.status_code == 200 and answer.text == "2 files\n"
    folder = incoming / event["eventID"]
    found = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert found == files


def test_binary_mode_event(receiver: str, cartd_stack: Any, incoming: Path) -> None:
    event = make_event(cartd_stack, {"b.txt": b"binary\n"})
    headers = {"ce-specversion": "1.0", "ce-id": "bin-1", "ce-type": "org.pacifica.metadata.ingest",
               "ce-source": "/pacifica/metadata/ingest", "Content-Type": "application/json"}
    answer = requests.post(receiver, data=json.dumps(event["data"]), headers=headers, timeout=60)
    assert answer.status_code == 200
    assert (incoming / "bin-1" / "b.txt").read_bytes() == b"binary\n"


def test_bad_event_is_a_400_and_writes_nothing(receiver: str, incoming: Path) -> None:
    bad = {"data": [{"destinationTable": "Files", "_id": 1, "name": "../x", "hashtype": "sha1",
                     "hashsum": "0" * 40}]}
    answer = requests.post(receiver, json=bad, timeout=60)
    assert answer.status_code == 400 and "climbs out" in answer.text
    assert not (incoming / "data").exists(), "nothing written for a refused event"
