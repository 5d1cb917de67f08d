"""In a real Pacifica facility: uploads through Ingest, the events Notifications delivers, Policy's documents.

The ``facility`` fixture (tests/support/facility_stack.py) runs the upstream services
from PyPI; files are uploaded with ``pacifica-cli upload`` as at a site. The
download service (``pacifica-downloader serve``, tests/support/service.py) is
subscribed to Notifications with ``pacifica-downloader subscribe`` and queues
each event for two real download workers (tests/support/download_workers.py) on the
facility's downloads broker, which the tests stop and start; the service
itself is SIGKILLed and started again. Every condition is waited for by
observing it (an event's status, the files), within a bound.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

pytest.importorskip("celery")  # the download workers and the service's queuing; other Pythons run without it

from support.download_workers import DownloadWorkers  # noqa: E402
from support.facility_stack import INSTRUMENT_ID, PROJECT_ID, USER_ID, FacilityStack  # noqa: E402
from support.fault_proxy import FaultProxy  # noqa: E402
from support.service import ServeProcess, wait_until  # noqa: E402
from support.sessions import RecordingSession  # noqa: E402

from pacifica.downloader import Downloader, PolicyError  # noqa: E402
from pacifica.downloader._incoming import HIDDEN_DIR  # noqa: E402

TOKEN = "facility-Serve-T0ken-5"
#: Bound on an uploaded transaction's files being downloaded by the workers (seconds).
WAIT = 180.0
#: Bound on one command of this library.
COMMAND = 180
REPO_ROOT = Path(__file__).resolve().parent.parent


def some_files(tag: str) -> dict[str, bytes]:
    return {
        f"{tag}/readme.txt": f"transaction {tag}\n".encode(),
        f"{tag}/raw/run-01.dat": os.urandom(150_000),
        "caf\u00e9 notes.txt": f"unicode {tag}\n".encode(),
    }


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


def assert_mirrored(folder: Path, files: dict[str, bytes]) -> None:
    """``folder`` holds exactly ``files``: the same names, the same sha1, the same bytes."""
    found = {
        str(path.relative_to(folder)): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and HIDDEN_DIR not in path.relative_to(folder).parts
    }
    assert {path: hashlib.sha1(data).hexdigest() for path, data in found.items()} == {
        path: hashlib.sha1(data).hexdigest() for path, data in files.items()
    }
    assert found == files


def event_id(transaction: int) -> str:
    """The id Metadata gives the ingest event of ``transaction`` (its NOTIFICATIONS_INGEST_EVENTID default)."""
    return f"metadata.ingest.{transaction}"


def run_downloader(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PACIFICA_DOWNLOADER_", "CARTD_", "DOWNLOADER_")) and "proxy" not in key.lower()
    }
    environ.update(NO_PROXY="127.0.0.1,localhost", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "pacifica.downloader", *args],
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND,
    )


@pytest.fixture(scope="module")
def workers(facility: FacilityStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DownloadWorkers]:
    """Two download workers on the facility's downloads broker, each a process of its own."""
    pool = DownloadWorkers(
        facility,
        tmp_path_factory.mktemp("facility-workers"),
        BROKER_URL=facility.downloads_broker_url,
        BACKEND_URL=facility.downloads_broker_url,
    )
    try:
        pool.start("facility-a")
        pool.start("facility-b")
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def incoming(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("facility-area") / "incoming"


@pytest.fixture(scope="module")
def service(
    workers: DownloadWorkers, incoming: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    serve = ServeProcess(incoming, tmp_path_factory.mktemp("facility-serve"), workers.env, TOKEN)
    serve.start()
    try:
        yield serve
    finally:
        serve.stop()


def subscribe_args(facility: FacilityStack, target: str) -> list[str]:
    """The command line of ``pacifica-downloader subscribe`` for ``target``, as the uploader."""
    return ["subscribe", "--notifications-url", facility.notifications_url, "--user", "uploader", "--target", target]


def subscribe(facility: FacilityStack, target: str) -> str:
    result = run_downloader(*subscribe_args(facility, target), env={"DOWNLOADER_SERVE_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def subscription(facility: FacilityStack, service: ServeProcess) -> str:
    """The service's event match, made with ``pacifica-downloader subscribe``: its uuid."""
    return subscribe(facility, service.url)


def match(facility: FacilityStack, uuid: str) -> dict[str, Any]:
    (found,) = [each for each in facility.event_matches() if each["uuid"] == uuid]
    return found


def upload(facility: FacilityStack, root: Path, files: dict[str, bytes]) -> int:
    return facility.upload(write_tree(root, files))


# -- the main path --------------------------------------------------------------------------------


def test_three_uploads_are_mirrored_byte_for_byte(
    facility: FacilityStack,
    service: ServeProcess,
    subscription: str,
    workers: DownloadWorkers,
    incoming: Path,
    tmp_path: Path,
) -> None:
    contents = [some_files(f"t{n}") for n in range(3)]
    uploads = {upload(facility, tmp_path / f"upload-{n}", files): files for n, files in enumerate(contents)}
    assert len(uploads) == 3
    for transaction, files in uploads.items():
        status = service.wait_for(event_id(transaction), "queued", WAIT, task_state="SUCCESS")
        assert status["folder"] == str(incoming / event_id(transaction))
        assert sorted(entry["path"] for entry in status["files"]) == sorted(
            str(incoming / event_id(transaction) / path) for path in files
        )
        assert_mirrored(incoming / event_id(transaction), files)
    assert match(facility, subscription)["disabled"] is None


def test_an_event_delivered_twice_is_downloaded_once(
    facility: FacilityStack,
    service: ServeProcess,
    subscription: str,
    workers: DownloadWorkers,
    incoming: Path,
    tmp_path: Path,
) -> None:
    transaction = upload(facility, tmp_path, some_files("twice"))
    status = service.wait_for(event_id(transaction), "queued", WAIT, task_state="SUCCESS")
    delivered = recorded_event(incoming, event_id(transaction))
    again = service.post(json.dumps(delivered).encode())  # what Notifications would send again
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert workers.count(re.escape(f"[{status['task']}] received")) == 1
    assert match(facility, subscription)["disabled"] is None


def recorded_event(incoming: Path, event: str) -> dict[str, Any]:
    """The event exactly as Notifications POSTed it, from the service's journal."""
    record = json.loads((incoming / HIDDEN_DIR / "events" / "queued" / f"{event}.json").read_text())
    return dict(record["event"])


def test_the_delivered_event_and_policys_document_drive_the_library_and_the_command(
    facility: FacilityStack, service: ServeProcess, subscription: str, incoming: Path, tmp_path: Path
) -> None:
    files = some_files("library")
    transaction = upload(facility, tmp_path / "upload", files)
    service.wait_for(event_id(transaction), "queued", WAIT)
    event = recorded_event(incoming, event_id(transaction))
    assert event["eventType"] == "org.pacifica.metadata.ingest" and event["cloudEventsVersion"] == "0.1"

    down = Downloader(tmp_path / "from-event", facility.cart_url)
    assert len(down.cloudevent(event)) == len(files)
    assert_mirrored(tmp_path / "from-event" / "data", files)

    document = requests.get(f"{facility.policy_url}/status/transactions/by_id/{transaction}", timeout=30).json()
    assert Downloader(tmp_path / "from-policy", facility.cart_url).transactioninfo(document)
    assert_mirrored(tmp_path / "from-policy" / "data", files)

    for policy_url in (facility.policy_url, f"{facility.policy_url}/status/transactions/by_id"):
        out = tmp_path / "command" / str(len(policy_url))
        result = run_downloader(
            "transactioninfo",
            "--transaction-id",
            str(transaction),
            "--policy-url",
            policy_url,
            "--cart-url",
            facility.cart_url,
            "-d",
            str(out),
            "--json",
        )
        assert result.returncode == 0, result.stderr
        assert len(json.loads(result.stdout)) == len(files)
        assert_mirrored(out / "data", files)


def test_an_unknown_transaction_is_an_error_and_no_cart_is_created(facility: FacilityStack, tmp_path: Path) -> None:
    unknown = 987654
    document = requests.get(f"{facility.policy_url}/status/transactions/by_id/{unknown}", timeout=30)
    assert document.status_code == 200, "Policy answers an unknown transaction with 200 and an error document"
    session = RecordingSession(refuse=True)
    with pytest.raises(PolicyError, match=f"No Transaction with an ID of {unknown} was found"):
        Downloader(tmp_path / "lib", facility.cart_url, session=session).transactioninfo(document.json())
    assert session.sent == []
    with FaultProxy.for_url(facility.cart_url) as cartd:  # a request log in front of the real Cartd
        result = run_downloader(
            "transactioninfo",
            "--transaction-id",
            str(unknown),
            "--policy-url",
            facility.policy_url,
            "--cart-url",
            cartd.url,
            "-d",
            str(tmp_path / "cli"),
        )
        assert result.returncode == 3, result.stderr
        assert f"gave no files for transaction {unknown}" in result.stderr
        assert f"No Transaction with an ID of {unknown} was found" in result.stderr
        assert cartd.requests == [], "no cart created"
    assert not (tmp_path / "cli" / "data").exists()


# -- faults -----------------------------------------------------------------------------------------


def test_broker_stopped_while_an_event_arrives(
    facility: FacilityStack, service: ServeProcess, subscription: str, incoming: Path, tmp_path: Path
) -> None:
    files = some_files("broker")
    facility.kill("downloads-redis")
    try:
        transaction = upload(facility, tmp_path, files)
        service.wait_for(event_id(transaction), "received", WAIT)
        status, health = service.health()
        assert status == 503 and health["broker"] == "unreachable" and health["waiting"] >= 1
    finally:
        facility.start_again("downloads-redis")
    service.wait_for(event_id(transaction), "queued", WAIT, task_state="SUCCESS")
    assert_mirrored(incoming / event_id(transaction), files)
    assert match(facility, subscription)["disabled"] is None
    status, health = service.health()
    assert status == 200 and health["broker"] == "reachable" and health["waiting"] == 0


def test_service_killed_right_after_answering_then_started(
    facility: FacilityStack, service: ServeProcess, subscription: str, incoming: Path, tmp_path: Path
) -> None:
    files = some_files("killed")
    facility.kill("downloads-redis")  # so that the recorded event is still waiting when the service dies
    try:
        transaction = upload(facility, tmp_path, files)
        service.wait_for(event_id(transaction), "received", WAIT)
        service.kill()
    finally:
        facility.start_again("downloads-redis")
    service.start()  # the same port: the event match's target
    service.wait_for(event_id(transaction), "queued", WAIT, task_state="SUCCESS")
    assert_mirrored(incoming / event_id(transaction), files)
    assert match(facility, subscription)["disabled"] is None


def test_a_malformed_event_is_rejected_and_the_subscription_stays_enabled(
    facility: FacilityStack, service: ServeProcess, subscription: str, incoming: Path
) -> None:
    # Through Notifications: an ingest event Policy lets through, whose one file would climb out of the download.
    event = {
        "cloudEventsVersion": "0.1",
        "eventType": "org.pacifica.metadata.ingest",
        "eventID": "bad-ingest-1",
        "source": "/tests",
        "contentType": "application/json",
        "data": [
            {"destinationTable": "Transactions.submitter", "value": USER_ID},
            {"destinationTable": "Transactions.project", "value": PROJECT_ID},
            {"destinationTable": "Transactions.instrument", "value": INSTRUMENT_ID},
            {
                "destinationTable": "Files",
                "_id": 1,
                "name": "../../escape",
                "subdir": "",
                "hashtype": "sha1",
                "hashsum": "0" * 40,
                "size": 1,
            },
        ],
    }
    assert requests.post(f"{facility.notifications_url}/receive", json=event, timeout=30).status_code == 200
    status = service.wait_for("bad-ingest-1", "rejected", WAIT)
    assert "climbs out" in status["reason"]
    assert match(facility, subscription)["disabled"] is None
    # Straight to the service, authenticated: not even JSON.
    garbage = service.post(b"\x00 not an event")
    assert garbage.status_code == 200 and garbage.json()["state"] == "rejected"
    assert service.status(garbage.json()["event"])["state"] == "rejected"
    assert "rejected event" in service.log()


def test_a_wrong_token_is_401_and_records_nothing(service: ServeProcess, incoming: Path) -> None:
    events = incoming / HIDDEN_DIR / "events"
    before = sorted(path.name for path in events.rglob("*.json"))
    answer = service.post(json.dumps({"eventID": "intruder", "data": []}).encode(), token="not-the-token")
    assert answer.status_code == 401
    assert sorted(path.name for path in events.rglob("*.json")) == before
    assert TOKEN not in answer.text and TOKEN not in service.log()


def test_subscribe_is_idempotent_and_replaces_a_disabled_match(facility: FacilityStack, service: ServeProcess) -> None:
    target = service.url + "second"
    first = subscribe(facility, target)
    assert subscribe(facility, target) == first
    who = {"Http-Remote-User": "uploader"}
    disabled = requests.put(
        f"{facility.notifications_url}/eventmatch/{first}",
        headers=who,
        timeout=30,
        json={"disabled": "2026-12-01T10:00:00", "error": "404 from a target that was down"},
    )
    assert disabled.status_code == 200
    second = subscribe(facility, target)
    assert second != first
    assert first not in [each["uuid"] for each in facility.event_matches()], "the disabled one is gone"
    assert match(facility, second)["disabled"] is None
    assert match(facility, second)["auth"] == {"type": "header", "header": {"type": "Bearer", "credentials": TOKEN}}
    requests.delete(f"{facility.notifications_url}/eventmatch/{second}", headers=who, timeout=30)
    wait_until(lambda: second not in [each["uuid"] for each in facility.event_matches()], 30, "the match deleted")


def test_subscribe_reports_what_notifications_refused(facility: FacilityStack, service: ServeProcess) -> None:
    result = run_downloader(*subscribe_args(facility, service.url + "third"), "--jsonpath", "$[?(@.", "-q")
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith(
        "pacifica-downloader: error: Notifications answered the create of the event match with HTTP 500"
    ), result.stderr
    assert result.stdout == ""
