"""The download service without a stack: its journal, its token, its HTTP answers, its queuing.

The broker is a fake sender here (a list, or one that raises as a broker
that is down does); tests/test_facility.py runs the real service against
the real Notifications, broker and workers.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from support.events import event_for

from pacifica.downloader import InvalidInputError
from pacifica.downloader._bearer import BearerToken, token_from_environment
from pacifica.downloader._journal import QUEUED, RECEIVED, REJECTED, EventJournal, EventRecord
from pacifica.downloader._serve import MAX_EVENT_BYTES, REQUEST_TIMEOUT, DownloadService, EventServer, record_key

TOKEN = "tok-Serve-S3cret-41"


class Broker:
    """A fake broker: ``sent`` the records queued; ``down`` makes every send raise, as kombu does."""

    def __init__(self) -> None:
        self.sent: list[EventRecord] = []
        self.down = False
        self.took = threading.Event()

    def send(self, record: EventRecord) -> str:
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        self.sent.append(record)
        self.took.set()
        return f"task-{len(self.sent)}"

    def probe(self) -> None:
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def service(tmp_path: Path, broker: Broker) -> DownloadService:
    return DownloadService(
        EventJournal(tmp_path / "incoming"),
        broker.send,
        reporter=lambda task: {"task_state": "SUCCESS", "files": []},
        probe=broker.probe,
    )


@pytest.fixture
def server(service: DownloadService) -> Iterator[str]:
    """The service over HTTP with small limits (64 KiB events, 5 s per request); ``default_server`` has the real."""
    yield from serving(
        EventServer(("127.0.0.1", 0), service, BearerToken(TOKEN), max_event_bytes=64 * 1024, request_timeout=5.0)
    )


@pytest.fixture
def default_server(service: DownloadService) -> Iterator[str]:
    """The service over HTTP with the limits a user gets (256 MiB events, 30 s per request)."""
    yield from serving(EventServer(("127.0.0.1", 0), service, BearerToken(TOKEN)))


def serving(http: EventServer) -> Iterator[str]:
    thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_port}"
    finally:
        http.shutdown()
        http.server_close()
        thread.join(10)


def post(url: str, body: Any, token: str | None = TOKEN, **headers: str) -> requests.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url + "/", data=data, headers=headers, timeout=10)


def files_in(journal: EventJournal) -> list[str]:
    return sorted(
        str(path.relative_to(journal.root))
        for path in journal.root.rglob("*")
        if path.is_file() and path.name != "service.lock"
    )


EVENT = event_for({"a/one.txt": b"one\n", "two.txt": b"two\n"}, first_id=7)


# -- the journal -------------------------------------------------------------------------------


def test_a_record_is_written_durably_under_its_final_name_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    journal = EventJournal(tmp_path)
    record = EventRecord("metadata.ingest.1", RECEIVED, "2026-12-02T00:00:00+00:00", event=EVENT, folder="f")
    assert journal.add(record) is None
    assert len(synced) == 2, "the file and its folder"
    assert files_in(journal) == ["received/metadata.ingest.1.json"]
    assert journal.find("metadata.ingest.1") == record
    assert journal.add(record) == record, "the same key is recorded once"
    assert [found.key for found in journal.pending()] == ["metadata.ingest.1"]


def test_queued_after_a_crash_between_the_two_writes(tmp_path: Path) -> None:
    journal = EventJournal(tmp_path)
    record = EventRecord("e1", RECEIVED, "2026-12-02T00:00:00+00:00", event=EVENT, folder="e1")
    journal.add(record)
    # The queued record written, the received one not yet removed: what a kill in between leaves.
    (journal.root / QUEUED / "e1.json").write_text(json.dumps({**record.to_json(), "state": QUEUED, "task": "t"}))
    assert list(journal.pending()) == []
    assert files_in(journal) == ["queued/e1.json"]
    assert journal.find("e1").task == "t"  # type: ignore[union-attr]


def test_a_failed_write_leaves_no_record_and_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = EventJournal(tmp_path)

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="disk is full"):
        journal.add(EventRecord("e2", RECEIVED, "now", event=EVENT))
    assert files_in(journal) == []


def test_one_service_per_journal(tmp_path: Path) -> None:
    first, second = EventJournal(tmp_path), EventJournal(tmp_path)
    first.hold()
    with pytest.raises(OSError, match="another download service"):
        second.hold()
    first.release()
    second.hold()
    second.release()


def test_record_keys_are_plain_folder_names() -> None:
    assert record_key("metadata.ingest.42") == "metadata.ingest.42"
    for odd in ("../../etc/passwd", ".hidden", "a b", "x/y", "é", "-" * 3, "a" * 200):
        key = record_key(odd)
        assert "/" not in key and not key.startswith(".") and key.isascii() and len(key) < 100, key
    assert record_key("a/b") != record_key("a_b"), "two ids never share a folder"


# -- the token ---------------------------------------------------------------------------------


def test_token_from_the_environment_or_a_file(tmp_path: Path) -> None:
    assert token_from_environment({}) is None
    assert token_from_environment({"DOWNLOADER_SERVE_TOKEN": TOKEN}).admits(f"Bearer {TOKEN}")  # type: ignore[union-attr]
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    token = token_from_environment({"DOWNLOADER_SERVE_TOKEN_FILE": str(path)})
    assert token is not None and token.admits(f"bearer  {TOKEN} ") and TOKEN not in repr(token)
    for environ, error in [
        ({"DOWNLOADER_SERVE_TOKEN": TOKEN, "DOWNLOADER_SERVE_TOKEN_FILE": str(path)}, "not both"),
        ({"DOWNLOADER_SERVE_TOKEN_FILE": str(tmp_path / "missing")}, "cannot read"),
        ({"DOWNLOADER_SERVE_TOKEN": "two words"}, "printable ASCII without spaces"),
    ]:
        with pytest.raises(InvalidInputError, match=error) as info:
            token_from_environment(environ)
        assert TOKEN not in str(info.value)
    path.write_text("\n")
    with pytest.raises(InvalidInputError, match="empty"):
        token_from_environment({"DOWNLOADER_SERVE_TOKEN_FILE": str(path)})


@pytest.mark.parametrize(
    "header", [None, "", TOKEN, f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer \u00e9"]
)
def test_token_refuses_anything_else(header: str | None) -> None:
    assert not BearerToken(TOKEN).admits(header)


# -- the HTTP service --------------------------------------------------------------------------


def test_an_event_is_recorded_then_queued_once(server: str, service: DownloadService, broker: Broker) -> None:
    answer = post(server, EVENT)
    assert answer.status_code == 202
    key = EVENT["eventID"]
    assert answer.json() == {"event": key, "state": RECEIVED, "folder": key, "status": f"/status/{key}"}
    assert answer.headers["Location"] == f"/status/{key}"
    assert service.journal.find(key).state == RECEIVED  # type: ignore[union-attr]
    assert service.queue_pending() == 1
    again = post(server, EVENT)  # Notifications sending it again, or a second subscription
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert service.queue_pending() == 0
    assert [record.key for record in broker.sent] == [key]
    assert [record.folder for record in broker.sent] == [key]
    status = requests.get(server + f"/status/{key}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert status.json()["state"] == QUEUED and status.json()["task"] == "task-1"
    assert status.json()["task_state"] == "SUCCESS"


def test_binary_mode_event(server: str, service: DownloadService) -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "bin-1",
        "ce-type": "org.pacifica.metadata.ingest",
        "ce-source": "/pacifica/metadata/ingest",
        "Content-Type": "application/json",
    }
    assert post(server, EVENT["data"], **headers).status_code == 202
    assert service.journal.find("bin-1").event["data"] == EVENT["data"]  # type: ignore[union-attr]


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x"])
def test_a_post_without_the_token_is_401_and_records_nothing(
    server: str, service: DownloadService, token: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pacifica.downloader")
    answer = post(server, EVENT, token=token)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert files_in(service.journal) == []
    assert requests.get(server + f"/status/{EVENT['eventID']}", timeout=10).status_code == 401
    assert TOKEN not in answer.text and TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json at all", "not JSON"),
        ({"eventID": "no-files", "data": []}, "lists no files"),
        (
            {
                "eventID": "bad-record",
                "data": [
                    {"destinationTable": "Files", "_id": 1, "name": "../x", "hashtype": "sha1", "hashsum": "0" * 40}
                ],
            },
            "climbs out",
        ),
        ({"data": EVENT["data"]}, "has no id"),
        ({"eventID": "no-data"}, "no 'data'"),
        ([1, 2], "no CloudEvent"),
    ],
)
def test_an_event_that_cannot_be_downloaded_is_recorded_rejected_and_answered_200(
    server: str, service: DownloadService, broker: Broker, body: Any, reason: str
) -> None:
    answer = post(server, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == REJECTED and reason in answer.json()["reason"]
    key = answer.json()["event"]
    assert service.journal.find(key).reason == answer.json()["reason"]  # type: ignore[union-attr]
    status = requests.get(
        server + answer.headers["Location"], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ).json()
    assert status["state"] == REJECTED and reason in status["reason"]
    assert service.queue_pending() == 0 and broker.sent == []
    assert requests.get(server + "/health", timeout=10).json()["rejected"] == 1


def test_the_same_id_with_other_data_is_rejected_not_dropped(server: str, service: DownloadService) -> None:
    assert post(server, EVENT).status_code == 202
    other = dict(EVENT, data=event_for({"x.txt": b"x"}, first_id=99)["data"])
    answer = post(server, other)
    assert answer.status_code == 200 and answer.json()["state"] == REJECTED
    assert "other data" in answer.json()["reason"]
    assert answer.json()["event"].startswith(EVENT["eventID"] + "~")


def test_a_body_over_the_limit_is_read_and_rejected(server: str, service: DownloadService) -> None:
    answer = post(server, b"[" + b"0," * 40_000 + b"0]")
    assert answer.status_code == 200 and answer.json()["state"] == REJECTED
    assert "more than the 65536 read" in answer.json()["reason"]


def raw_connection(url: str) -> socket.socket:
    host, port = url.rsplit("//", 1)[1].split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def test_with_defaults_a_body_over_256_mib_is_drained_and_rejected(default_server: str, broker: Broker) -> None:
    """The limit a user gets: one byte more than MAX_EVENT_BYTES is read off the socket (so the answer reaches a
    client still sending) but never kept, and the event is rejected, not recorded as an event."""
    length = MAX_EVENT_BYTES + 1
    with raw_connection(default_server) as conn:
        conn.sendall(
            f"POST / HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        chunk = b" " * (1 << 20)
        left = length
        while left:
            left -= conn.send(chunk[: min(left, len(chunk))])
        conn.shutdown(socket.SHUT_WR)
        answer = b"".join(iter(lambda: conn.recv(65536), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0]
    reply = json.loads(body)
    assert reply["state"] == REJECTED
    assert f"more than the {MAX_EVENT_BYTES} read" in reply["reason"]
    assert broker.sent == [], "nothing is queued"


def test_with_defaults_a_silent_client_is_let_go(default_server: str) -> None:
    """A client that opens a connection and stops mid-headers is disconnected by the server after
    REQUEST_TIMEOUT (30 s), the limit a user gets; the test's own bound is four times that."""
    with raw_connection(default_server) as conn:
        conn.sendall(b"POST / HTTP/1.1\r\nHost: test\r\n")  # and then nothing
        conn.settimeout(REQUEST_TIMEOUT * 4)
        assert conn.recv(65536) == b"", "the server closed the connection"


def test_broker_down_the_event_waits_and_is_queued_when_it_is_back(
    server: str, service: DownloadService, broker: Broker
) -> None:
    broker.down = True
    assert post(server, EVENT).status_code == 202, "recorded: answered 2xx though nothing can be queued"
    assert service.queue_pending() == 0
    health = requests.get(server + "/health", timeout=10)
    assert health.status_code == 503
    assert health.json()["broker"] == "unreachable" and health.json()["waiting"] == 1
    assert "Connection refused" in health.json()["broker_error"]
    broker.down = False
    assert service.queue_pending() == 1
    assert requests.get(server + "/health", timeout=10).json() == {
        "broker": "reachable",
        "waiting": 0,
        "rejected": 0,
        "queued": 1,
    }


def test_a_restarted_service_queues_what_was_recorded_before(tmp_path: Path, broker: Broker) -> None:
    first = DownloadService(EventJournal(tmp_path), broker.send)
    broker.down = True
    assert first.receive({}, json.dumps(EVENT).encode()).status == 202
    assert first.queue_pending() == 0
    broker.down = False
    restarted = DownloadService(EventJournal(tmp_path), broker.send)  # a new process, the same download area
    stop = threading.Event()
    loop = threading.Thread(target=restarted.queue_loop, args=(stop, 60.0))
    loop.start()
    try:
        assert broker.took.wait(10), "queued by the loop's first pass, at start-up, not 60 s later"
    finally:
        stop.set()
        restarted.wake.set()
        loop.join(10)
    assert [record.key for record in broker.sent] == [EVENT["eventID"]]


def test_other_methods_and_paths(server: str) -> None:
    assert requests.put(server + "/", data=b"{}", timeout=10).status_code == 405
    assert requests.get(server + "/nothing", timeout=10).status_code == 404
    missing = requests.get(server + "/status/nope", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert missing.status_code == 404


# -- the subscription's plan -------------------------------------------------------------------


def test_subscribe_keeps_updates_replaces_or_creates() -> None:
    from pacifica.downloader._subscribe import Plan, plan

    target, path, token = "http://dl:8090/", "$", BearerToken(TOKEN)
    auth = {"type": "header", "header": {"type": "Bearer", "credentials": TOKEN}}
    enabled = {"uuid": "u1", "target_url": target, "jsonpath": path, "disabled": None, "auth": auth}
    disabled = {
        "uuid": "u0",
        "target_url": target,
        "jsonpath": path,
        "disabled": "2026-12-01T10:00:00",
        "error": "404 Not Found",
        "auth": auth,
    }
    elsewhere = {"uuid": "u9", "target_url": "http://other/", "jsonpath": path, "disabled": None, "auth": {}}
    assert plan([enabled, disabled, elsewhere], target, path, token) == Plan("keep", "u1", ("u0",))
    assert plan([enabled], target, path, BearerToken("rotated-token")) == Plan("update", "u1")
    assert plan([enabled], target, path, None) == Plan("update", "u1")
    assert plan([disabled, elsewhere], target, path, token) == Plan("create", None, ("u0",))
    assert plan([enabled], target, "$.other", token) == Plan("create")
    assert plan([dict(enabled, deleted="2026-12-01T10:00:00")], target, path, token) == Plan("create")
