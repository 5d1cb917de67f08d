"""CloudEvents 1.0 in every form a service meets: structured JSON, binary-mode HTTP, and SDK objects."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from pacifica.downloader import CloudEvent, InvalidInputError
from pacifica.downloader._events import event_records, from_http

FILES = [
    {"destinationTable": "Transactions._id", "value": 7},
    {
        "destinationTable": "Files",
        "_id": 34,
        "name": "foo.txt",
        "subdir": "a/b/",
        "hashtype": "sha1",
        "hashsum": hashlib.sha1(b"foo").hexdigest(),
        "size": 3,
    },
]
ATTRIBUTES = {
    "specversion": "1.0",
    "id": "ev-1",
    "type": "org.pacifica.metadata.ingest",
    "source": "/pacifica/metadata/ingest",
}


def paths(event: Any) -> list[str]:
    return [entry["path"] for entry in CloudEvent.cloudevent(event)()]


def test_structured_1_0_and_0_1() -> None:
    assert paths(dict(ATTRIBUTES, data=FILES)) == ["a/b/foo.txt"]
    assert paths({"cloudEventsVersion": "0.1", "eventID": "x", "data": FILES}) == ["a/b/foo.txt"]


def test_binary_mode_http() -> None:
    headers = {
        "Content-Type": "application/json",
        "CE-SpecVersion": "1.0",
        "ce-id": "ev-1",
        "ce-type": "org.pacifica.metadata.ingest",
        "ce-source": "/pacifica/metadata/ingest",
    }
    event = from_http(headers, json.dumps(FILES).encode())
    assert event["specversion"] == "1.0" and event["id"] == "ev-1"
    assert paths(event) == ["a/b/foo.txt"]


def test_structured_mode_http() -> None:
    body = json.dumps(dict(ATTRIBUTES, data=FILES))
    event = from_http({"Content-Type": "application/cloudevents+json"}, body)
    assert paths(event) == ["a/b/foo.txt"]


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b""])
def test_http_without_an_event_is_bad_input(body: bytes) -> None:
    with pytest.raises(InvalidInputError):
        from_http({"Content-Type": "application/json"}, body)


def test_data_as_a_json_string() -> None:
    assert paths(dict(ATTRIBUTES, data=json.dumps(FILES))) == ["a/b/foo.txt"]


def test_sdk_objects_are_taken_as_they_are() -> None:
    pytest.importorskip("cloudevents")
    from cloudevents.core.v1.event import CloudEvent as CoreEvent

    core = CoreEvent(dict(ATTRIBUTES), FILES)  # type: ignore[arg-type]
    assert [record.path for record in event_records(core)] == ["a/b/foo.txt"]
    from cloudevents.v1.http import CloudEvent as HttpEvent

    legacy = HttpEvent({"type": ATTRIBUTES["type"], "source": ATTRIBUTES["source"]}, FILES)
    assert paths(legacy) == ["a/b/foo.txt"]
