"""Server-free tests of reading Notifications CloudEvents and Policy transaction-info documents."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from support.sessions import RecordingSession

from pacifica.downloader import CloudEvent, Downloader, InvalidInputError, PolicyError, TransactionInfo
from pacifica.downloader._policy_service import transaction_url
from pacifica.downloader._transactions import transaction_records

SHA1 = "f1d2d2f924e986ac86fdf7b36c94bcdf32beec15"
EXAMPLE = Path(__file__).resolve().parent / "data" / "notifications-events.json"  # a copy of shared/examples/
EXAMPLE_THIRD_NAME = "パソコン資産管理台帳（S&T HK）_現地調達PC.xls"
ENTRY_KEYS = {"id", "path", "hashtype", "hashsum"}


def _file(file_id: Any, name: str, subdir: str = "", **extra: Any) -> dict[str, Any]:
    record = {"destinationTable": "Files", "name": name, "subdir": subdir, "hashtype": "sha1", "hashsum": SHA1}
    if file_id is not None:
        record["_id"] = file_id
    record.update(extra)
    return record


def _entries(files: Any) -> list[dict[str, str]]:
    assert callable(files)
    entries = list(files())
    for entry in entries:
        assert set(entry) == ENTRY_KEYS
        assert all(isinstance(value, str) for value in entry.values())
    return entries


@pytest.fixture()
def example() -> dict[str, Any]:
    if not EXAMPLE.is_file():
        pytest.skip(f"the shared example {EXAMPLE} is absent")
    with open(EXAMPLE, encoding="utf-8") as handle:
        return json.load(handle)


# -- the shared example ---------------------------------------------------------------


def test_example_as_is_is_bad_input(example: dict[str, Any]) -> None:
    """Its third Files record (data[9]) has no ``_id``: the event is refused, naming that record."""
    for reader in (CloudEvent.cloudevent, CloudEvent.yield_files):
        with pytest.raises(InvalidInputError) as info:
            reader(example)
        assert len(info.value.problems) == 1
        problem = info.value.problems[0]
        assert problem.startswith("data[9]")
        assert "'_id'" in problem and "missing" in problem
        assert EXAMPLE_THIRD_NAME in problem


def test_example_with_the_missing_id_gives_three_entries(example: dict[str, Any]) -> None:
    event = copy.deepcopy(example)
    assert "_id" not in event["data"][9]
    event["data"][9]["_id"] = 36
    for reader in (CloudEvent.cloudevent, CloudEvent.yield_files):
        entries = _entries(reader(event))
        assert entries == [
            {"id": "34", "path": "a/b/foo.txt", "hashtype": "sha1", "hashsum": SHA1},
            {"id": "35", "path": "a/b/bar.txt", "hashtype": "sha1", "hashsum": SHA1},
            {"id": "36", "path": "data/a/c/" + EXAMPLE_THIRD_NAME, "hashtype": "sha1", "hashsum": SHA1},
        ]


def test_callable_can_be_called_again(example: dict[str, Any]) -> None:
    event = copy.deepcopy(example)
    event["data"][9]["_id"] = 36
    files = CloudEvent.cloudevent(event)
    assert list(files()) == list(files())
    assert len(list(files())) == 3


def test_alias() -> None:
    assert CloudEvent.yield_files is CloudEvent.cloudevent
    assert TransactionInfo.yield_files is TransactionInfo.transactioninfo


# -- event shapes -------------------------------------------------------------------


def test_cloudevents_1_0_structured() -> None:
    event = {
        "specversion": "1.0",
        "id": "C234-1234-1234",
        "type": "org.pacifica.metadata.ingest",
        "source": "/pacifica/metadata/ingest",
        "datacontenttype": "application/json",
        "time": "2018-04-05T17:31:00Z",
        "data": [
            {"destinationTable": "Transactions._id", "value": 1234},
            _file(34, "foo.txt", "a/b/"),
            _file("x-35", "bar.txt"),
        ],
    }
    assert _entries(CloudEvent.cloudevent(event)) == [
        {"id": "34", "path": "a/b/foo.txt", "hashtype": "sha1", "hashsum": SHA1},
        {"id": "x-35", "path": "bar.txt", "hashtype": "sha1", "hashsum": SHA1},
    ]


@pytest.mark.parametrize("encode", [json.dumps, lambda data: json.dumps(data).encode("utf-8")], ids=["str", "bytes"])
def test_data_as_json_text(encode: Any) -> None:
    data = [_file(34, "foo.txt", "a/b/"), _file(35, "日本語.txt", "a")]
    event = {"specversion": "1.0", "id": "1", "type": "t", "source": "/s", "data": encode(data)}
    assert [entry["path"] for entry in _entries(CloudEvent.cloudevent(event))] == ["a/b/foo.txt", "a/日本語.txt"]


def test_non_files_records_ignored() -> None:
    event = {
        "data": [
            {"destinationTable": "Transactions._id", "value": 1234},
            {"destinationTable": "TransactionKeyValue", "key": "Tag", "value": "x"},
            # Not Files: ignored, however broken it would be as a file.
            {"destinationTable": "Files.extra", "name": "../../etc/passwd", "_id": True},
            {"destinationTable": "files", "name": "/abs"},
            {"name": "no-table"},
            _file(34, "foo.txt", "a"),
        ]
    }
    assert [entry["id"] for entry in _entries(CloudEvent.cloudevent(event))] == ["34"]


@pytest.mark.parametrize(
    "event",
    [
        {"data": []},
        {"data": "[]"},
        {"data": [{"destinationTable": "Transactions._id", "value": 1}]},
        {"specversion": "1.0", "id": "1", "type": "t", "source": "/s", "data": []},
    ],
)
def test_no_files_gives_empty_list(event: dict[str, Any]) -> None:
    assert _entries(CloudEvent.cloudevent(event)) == []


@pytest.mark.parametrize("event", [None, [], [_file(34, "x")], "event", b"{}", 42, 1.5, True, object()])
def test_non_dict_event_refused(event: Any) -> None:
    with pytest.raises(InvalidInputError, match="CloudEvent must be"):
        CloudEvent.cloudevent(event)


@pytest.mark.parametrize(
    "event, message",
    [
        ({}, "no 'data'"),
        ({"specversion": "1.0", "id": "1"}, "no 'data'"),
        ({"data": None}, "must be the list"),
        ({"data": {"files": []}}, "must be the list"),
        ({"data": 42}, "must be the list"),
        ({"data": "not json"}, "not JSON"),
        ({"data": "{}"}, "must be the list"),
        ({"data": b"\xff\xfe"}, "not JSON"),
    ],
)
def test_bad_data_refused(event: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        CloudEvent.cloudevent(event)


def test_sdk_like_object_read_through_data() -> None:
    class SdkEvent:
        data = [_file(34, "foo.txt", "a")]

        def get_attributes(self) -> dict[str, str]:
            return {"specversion": "1.0"}

    assert [entry["path"] for entry in _entries(CloudEvent.cloudevent(SdkEvent()))] == ["a/foo.txt"]


def test_every_bad_files_record_named() -> None:
    event = {
        "data": [
            _file(1, "ok.txt"),
            {"destinationTable": "Transactions._id", "value": 1234},
            _file(None, "no-id.txt"),
            _file(3, "../up.txt"),
            "not an object",
            _file(5, "ok2.txt"),
            _file(6, "bad-hash.txt", hashsum="xyz"),
        ]
    }
    with pytest.raises(InvalidInputError) as info:
        CloudEvent.cloudevent(event)
    problems = info.value.problems
    assert len(problems) == 4
    for label in ("data[2]", "data[3]", "data[4]", "data[6]"):
        assert sum(problem.startswith(label) for problem in problems) == 1, label
    for label in ("data[0]", "data[1]", "data[5]"):
        assert label not in str(info.value)


def test_duplicate_paths_in_event_refused() -> None:
    event = {"data": [_file(1, "x", "a/"), _file(2, "x", "a")]}
    with pytest.raises(InvalidInputError, match="requested twice"):
        CloudEvent.cloudevent(event)


def test_event_is_checked_at_once() -> None:
    """The error comes from cloudevent() itself, before the callable is ever called."""
    with pytest.raises(InvalidInputError):
        CloudEvent.cloudevent({"data": [_file(1, "/abs")]})


# -- transaction info -----------------------------------------------------------------


def _policy_file(**changes: Any) -> dict[str, Any]:
    record = {"_id": 103, "name": "foo.txt", "subdir": "a/b", "hashtype": "sha1", "hashsum": SHA1, "size": 4}
    record.update(changes)
    return record


def test_transactioninfo() -> None:
    document = {
        "files": {
            "103": _policy_file(),
            "104": _policy_file(_id=104, name="bar.txt", subdir="", hashtype="md5", hashsum="A" * 32),
        },
        "transactions": {"_id": 67},
    }
    for reader in (TransactionInfo.transactioninfo, TransactionInfo.yield_files):
        assert _entries(reader(document)) == [
            {"id": "103", "path": "a/b/foo.txt", "hashtype": "sha1", "hashsum": SHA1},
            {"id": "104", "path": "bar.txt", "hashtype": "md5", "hashsum": "a" * 32},
        ]


def test_transactioninfo_key_used_when_id_absent() -> None:
    record = _policy_file()
    del record["_id"]
    assert _entries(TransactionInfo.transactioninfo({"files": {"103": record}})) == [
        {"id": "103", "path": "a/b/foo.txt", "hashtype": "sha1", "hashsum": SHA1}
    ]


def test_transactioninfo_matching_string_id_accepted() -> None:
    entries = _entries(TransactionInfo.transactioninfo({"files": {"103": _policy_file(_id="103")}}))
    assert entries[0]["id"] == "103"


def test_transactioninfo_id_differing_from_key_refused() -> None:
    with pytest.raises(InvalidInputError) as info:
        TransactionInfo.transactioninfo({"files": {"103": _policy_file(_id=104)}})
    assert len(info.value.problems) == 1
    assert "files['103']" in info.value.problems[0]
    assert "104" in info.value.problems[0]


@pytest.mark.parametrize("document", [{"files": {}}, {"status": "success", "files": {}}, {"files": {}, "_id": 3}])
def test_transactioninfo_with_empty_files_is_an_empty_download(document: dict[str, Any]) -> None:
    assert _entries(TransactionInfo.transactioninfo(document)) == []


#: What Policy answers (HTTP 200) for an unknown transaction: Metadata's error document, as it is.
UNKNOWN_TRANSACTION = {
    "status": "404 Not Found",
    "message": "No Transaction with an ID of 999 was found",
    "traceback": "Traceback (most recent call last):\n  File ...\nIndexError: list index out of range\n",
    "version": "18.10.0",
}


@pytest.mark.parametrize(
    ("document", "said"),
    [
        (UNKNOWN_TRANSACTION, "404 Not Found: No Transaction with an ID of 999 was found"),
        ({"status": "500 Internal Server Error", "message": "boom", "files": {}}, "500 Internal Server Error: boom"),
        ({"status": "error", "files": {"1": _policy_file(_id=1)}}, "error"),
        ({"status": 404}, "404"),
        ({}, "a document without 'files' (keys: none)"),
        ({"_id": 5, "transactions": {}}, "a document without 'files' (keys: _id, transactions)"),
    ],
)
def test_an_error_document_is_a_policy_error_not_an_empty_download(document: dict[str, Any], said: str) -> None:
    with pytest.raises(PolicyError) as info:
        TransactionInfo.transactioninfo(document)
    assert said in str(info.value)
    assert "Traceback" not in str(info.value)
    with pytest.raises(PolicyError, match="for transaction 999: "):
        transaction_records(document, 999)


def test_an_error_document_downloads_nothing_and_sends_nothing(tmp_path: Path) -> None:
    session = RecordingSession(refuse=True)
    down = Downloader(tmp_path, "http://127.0.0.1:9", session=session)
    with pytest.raises(PolicyError, match="No Transaction with an ID of 999"):
        down.transactioninfo(UNKNOWN_TRANSACTION)
    with pytest.raises(PolicyError):
        down.transactioninfo(tmp_path / "old-style", UNKNOWN_TRANSACTION)
    assert session.sent == []
    assert not (tmp_path / "data").exists() and not (tmp_path / "old-style").exists()


@pytest.mark.parametrize(
    ("policy_url", "expected"),
    [
        ("http://policy:8181", "http://policy:8181/status/transactions/by_id/7"),
        ("http://policy:8181/", "http://policy:8181/status/transactions/by_id/7"),
        ("https://site.org/policy", "https://site.org/policy/status/transactions/by_id/7"),
        ("https://site.org/policy/status/transactions/by_id", "https://site.org/policy/status/transactions/by_id/7"),
        ("https://site.org/policy/status/transactions/by_id/", "https://site.org/policy/status/transactions/by_id/7"),
    ],
)
def test_policy_url_forms(policy_url: str, expected: str) -> None:
    assert transaction_url(policy_url, 7) == expected


@pytest.mark.parametrize("document", [None, [], "doc", 3, {"files": []}, {"files": None}, {"files": "103"}])
def test_transactioninfo_bad_document_refused(document: Any) -> None:
    with pytest.raises(InvalidInputError):
        TransactionInfo.transactioninfo(document)


def test_transactioninfo_lists_every_bad_file() -> None:
    document = {
        "files": {
            "1": _policy_file(_id=1, name="ok"),
            "2": _policy_file(_id=2, name="/abs", subdir=""),
            "3": "not an object",
            "4": _policy_file(_id=4, name="x", hashtype="shake_128"),
            "": {"name": "no-id", "hashtype": "sha1", "hashsum": SHA1},
        }
    }
    with pytest.raises(InvalidInputError) as info:
        TransactionInfo.transactioninfo(document)
    problems = info.value.problems
    assert len(problems) == 4
    for label in ("files['2']", "files['3']", "files['4']", "files['']"):
        assert sum(problem.startswith(label) for problem in problems) == 1, label
    assert "files['1']" not in str(info.value)
