"""Property tests: any JSON-ish input gives valid cart records or InvalidInputError, and never a request.

Inputs are arbitrary JSON values and "almost valid" CloudEvents and
transaction-info documents: valid records with random mutations (dropped
keys, wrong types, ``..`` and absolute paths, NUL bytes, unknown hash types,
bad hex, bad ids).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pacifica.downloader import CartLimits, CloudEvent, Downloader, InvalidInputError, PolicyError, TransactionInfo
from pacifica.downloader._incoming import HIDDEN_DIR
from pacifica.downloader._ledger import LEDGER_DIR

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
#: Nothing listens there; no request may be sent anyway.
UNREACHABLE = "http://127.0.0.1:9"
HASHTYPES = ["sha1", "sha256", "md5", "sha512", "blake2b", "sha224", "sha3_256", "blake2s"]
ID_PATTERN = re.compile(r"[^/\\?#\s\x00]+")
HEX_LOWER = re.compile(r"[0-9a-f]+")
SHA1 = "f1d2d2f924e986ac86fdf7b36c94bcdf32beec15"


# -- strategies ---------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)
#: Text that is interesting in paths and ids: separators, dots, NUL, whitespace, non-ASCII.
tricky_text = st.lists(
    st.one_of(
        st.sampled_from(list("/.\x00 \n\t\\?#") + ["..", "./", "../", "é", "e\u0301", "パ", "\u202e"]),
        st.characters(blacklist_categories=("Cs",)),
    ),
    max_size=8,
).map("".join)
file_name = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=12
).filter(lambda text: text not in (".", ".."))
folder = st.lists(st.text(alphabet="abcdXYZ_é", min_size=1, max_size=4).map(lambda text: "d" + text), max_size=3).map(
    "/".join
)
good_ids = st.one_of(st.integers(min_value=0, max_value=10**12), st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True))


@st.composite
def valid_file(draw: Any, index: int) -> dict[str, Any]:
    """A valid Files object; ``index`` keeps names distinct from each other and from folders."""
    hashtype = draw(st.sampled_from(HASHTYPES))
    digits = 2 * hashlib.new(hashtype).digest_size
    record: dict[str, Any] = {
        "_id": draw(good_ids),
        "name": f"{index}_{draw(file_name)}",
        "subdir": draw(st.one_of(folder, folder.map(lambda text: text + "/"), st.just(None))),
        "hashtype": draw(st.sampled_from([hashtype, hashtype.upper()])),
        "hashsum": draw(st.text(alphabet="0123456789abcdefABCDEF", min_size=digits, max_size=digits)),
    }
    if record["subdir"] is None:
        del record["subdir"]
    if draw(st.booleans()):
        record["size"] = draw(st.integers(min_value=0, max_value=2**40))
    return record


WRONG_TYPES = st.one_of(
    st.none(), st.booleans(), st.floats(), st.lists(st.integers(), max_size=2), st.just({}), st.integers()
)
MUTATIONS = [
    "drop",
    "wrong_type",
    "dotdot",
    "absolute",
    "nul",
    "hashtype",
    "bad_hex",
    "bad_id",
    "size",
    "duplicate",
    "folder_conflict",
    "tricky_name",
    "tricky_subdir",
    "upper_hex",
    "long_name",
]


@st.composite
def mutated(draw: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Apply 0-3 random mutations to copies of ``records``."""
    records = copy.deepcopy(records)
    if not records:
        return records
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        record = records[draw(st.integers(min_value=0, max_value=len(records) - 1))]
        kind = draw(st.sampled_from(MUTATIONS))
        if kind == "drop":
            record.pop(draw(st.sampled_from(["_id", "name", "subdir", "hashtype", "hashsum"])), None)
        elif kind == "wrong_type":
            record[draw(st.sampled_from(["_id", "name", "subdir", "hashtype", "hashsum", "size"]))] = draw(WRONG_TYPES)
        elif kind == "dotdot":
            where = draw(st.sampled_from(["name", "subdir"]))
            record[where] = draw(st.sampled_from(["..", "../x", "a/../..", "x/..", "a/../b", "./../x"]))
        elif kind == "absolute":
            if draw(st.booleans()):
                record["subdir"] = draw(st.sampled_from(["/etc", "/", "//x", "/a/b/"]))
            else:
                record.pop("subdir", None)
                record["name"] = draw(st.sampled_from(["/x", "/etc/passwd", "//x"]))
        elif kind == "nul":
            where = draw(st.sampled_from(["name", "subdir"]))
            record[where] = str(record.get(where, "")) + "\x00" + draw(st.text(max_size=3))
        elif kind == "hashtype":
            record["hashtype"] = draw(st.sampled_from(["shake_128", "shake_256", "crc32", "", "sha-1", "SHA 1", "md4"]))
        elif kind == "bad_hex":
            hashsum = str(record.get("hashsum", SHA1))
            record["hashsum"] = draw(
                st.sampled_from(
                    [
                        hashsum[:-1] + "g",
                        hashsum[:-1],
                        hashsum + "0",
                        hashsum[:-1] + "\n",
                        "0x" + hashsum[2:],
                        " " + hashsum[1:],
                        "",
                        hashsum[:-1] + "٣",  # a non-ASCII digit
                    ]
                )
            )
        elif kind == "bad_id":
            record["_id"] = draw(st.sampled_from(["", "a/b", "a b", "34\n", "\t1", "a?b", "a#b", "a\\b", "x\x00"]))
        elif kind == "size":
            record["size"] = draw(st.sampled_from([-1, "12", 1.5, True]))
        elif kind == "duplicate":
            other = records[draw(st.integers(min_value=0, max_value=len(records) - 1))]
            record["name"], record["subdir"] = other.get("name"), other.get("subdir", "")
        elif kind == "folder_conflict":
            other = records[draw(st.integers(min_value=0, max_value=len(records) - 1))]
            record["subdir"] = "{}/{}".format(other.get("subdir") or "", other.get("name"))
        elif kind == "tricky_name":
            record["name"] = draw(tricky_text)
        elif kind == "tricky_subdir":
            record["subdir"] = draw(tricky_text)
        elif kind == "long_name":
            # Valid JSON, but longer than a file system allows for one name (255 bytes).
            record["name"] = draw(st.sampled_from(["x" * 256, "パ" * 90]))
        elif kind == "upper_hex" and isinstance(record.get("hashsum"), str):
            record["hashsum"] = record["hashsum"].upper()
    return records


@st.composite
def almost_valid_events(draw: Any) -> Any:
    count = draw(st.integers(min_value=0, max_value=4))
    files = draw(mutated([draw(valid_file(index)) for index in range(count)]))
    for record in files:
        record["destinationTable"] = "Files"
    others = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "destinationTable": st.sampled_from(["Transactions._id", "TransactionKeyValue"]),
                    "value": json_scalars,
                }
            ),
            max_size=2,
        )
    )
    data: list[Any] = files + others
    data = draw(st.permutations(data))
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        data.insert(draw(st.integers(min_value=0, max_value=len(data))), draw(json_values))
    encoded: Any = json.dumps(data) if draw(st.integers(min_value=0, max_value=4)) == 0 else data
    style = draw(st.sampled_from(["0.1", "1.0", "bare"]))
    names = {
        "0.1": ("cloudEventsVersion", "eventID", "eventType", "contentType"),
        "1.0": ("specversion", "id", "type", "datacontenttype"),
    }.get(style)
    if names is None:
        return {"data": encoded}
    version, event_id, kind, content_type = names
    return {
        version: style,
        event_id: "E-1",
        kind: "org.pacifica.metadata.ingest",
        "data": encoded,
        "source": "/pacifica/metadata/ingest",
        content_type: "application/json",
    }


@st.composite
def almost_valid_documents(draw: Any) -> Any:
    count = draw(st.integers(min_value=0, max_value=4))
    records = draw(mutated([draw(valid_file(index)) for index in range(count)]))
    files: dict[str, Any] = {}
    for record in records:
        key_kind = draw(st.sampled_from(["same", "same", "absent", "different", "text"]))
        file_id = record.get("_id")
        if key_kind == "absent" and "_id" in record:
            key = str(file_id)
            del record["_id"]
        elif key_kind == "different":
            key = f"{file_id}0"
        elif key_kind == "text":
            key = draw(tricky_text)
        else:
            key = str(file_id)
        files[key] = record
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        files[draw(st.text(max_size=5))] = draw(json_values)
    document: dict[str, Any] = {"files": files}
    if draw(st.booleans()):
        document["transactions"] = {"_id": 67, "submitter": 10}
    return document


events = st.one_of(
    almost_valid_events(),
    json_values,
    json_values.map(lambda data: {"data": data}),
    st.lists(json_values, max_size=3).map(lambda data: {"specversion": "1.0", "id": "x", "data": data}),
)
documents = st.one_of(
    almost_valid_documents(),
    json_values,
    json_values.map(lambda files: {"files": files}),
    st.dictionaries(st.text(max_size=5), json_values, max_size=3).map(lambda files: {"files": files}),
)


# -- checks -------------------------------------------------------------------------------


class NetworkReached(Exception):
    """Raised by the patched ``requests.Session.request``: valid input got as far as the network."""


def assert_valid_entries(entries: list[dict[str, Any]]) -> None:
    """Every entry is a safe, checkable Cartd ``fileids`` entry, and no two collide."""
    assert isinstance(entries, list)
    paths = set()
    for entry in entries:
        assert set(entry) == {"id", "path", "hashtype", "hashsum"}, entry
        assert all(isinstance(value, str) for value in entry.values()), entry
        path = entry["path"]
        assert path and not path.startswith("/"), entry
        assert "\x00" not in path, entry
        assert all(part not in ("", ".", "..") for part in path.split("/")), entry
        hashtype = entry["hashtype"]
        assert hashtype in hashlib.algorithms_available and not hashtype.startswith("shake"), entry
        assert HEX_LOWER.fullmatch(entry["hashsum"]), entry
        assert len(entry["hashsum"]) == 2 * hashlib.new(hashtype).digest_size, entry
        assert ID_PATTERN.fullmatch(entry["id"]), entry
        assert path not in paths, entry
        paths.add(path)
    for path in paths:
        parent = path.rpartition("/")[0]
        while parent:
            assert parent not in paths, path
            parent = parent.rpartition("/")[0]


def assert_ids_are_keys(document: Any, entries: Any) -> None:
    """Each accepted transaction-info entry's id is its key in the document (the key stands in for a missing _id)."""
    if entries and isinstance(document, dict) and isinstance(document.get("files"), dict):
        assert sorted(entry["id"] for entry in entries) == sorted(str(key) for key in document["files"])


def read_or_refuse(reader: Callable[[Any], Callable[[], Iterator[dict[str, str]]]], value: Any) -> Any:
    """Return the entries ``reader`` gives for ``value``, or None when it refuses it.

    Input is refused with :class:`InvalidInputError`, or :class:`PolicyError` for a transaction document that is
    Policy's error document (a ``status`` that is not a success, or no ``files``).
    """
    try:
        files = reader(value)
    except (InvalidInputError, PolicyError) as err:
        assert getattr(err, "problems", None) or str(err)
        return None
    entries = list(files())
    assert_valid_entries(entries)
    return entries


def no_request(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"a request was sent: {method} {url}")


@pytest.fixture(scope="module")
def download_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pacifica-downloader-props-"))
    (path / "data").mkdir()  # as an earlier download would have left it
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _valid_event(**changes: Any) -> dict[str, Any]:
    record = {
        "destinationTable": "Files",
        "_id": 34,
        "name": "foo.txt",
        "subdir": "a",
        "hashtype": "sha1",
        "hashsum": SHA1,
    }
    record.update(changes)
    return {"data": [record]}


#: 304 bytes: longer than file systems allow for one name (255), in a folder that exists.
LONG_NAME_EVENT = _valid_event(subdir="", name="パ" * 100 + ".txt")
NEWLINE_HEX_EVENT = _valid_event(hashsum=SHA1[:-1] + "\n")
NEWLINE_ID_EVENT = _valid_event(_id="34\n")
ID_KEY_MISMATCH_DOCUMENT = {"files": {"103": {"_id": 104, "name": "x", "hashtype": "sha1", "hashsum": SHA1}}}


# -- the properties -----------------------------------------------------------------------


@SETTINGS
@given(event=events)
@example(event=NEWLINE_HEX_EVENT)
@example(event=NEWLINE_ID_EVENT)
def test_cloudevent_gives_valid_records_or_invalid_input(event: Any) -> None:
    with mock.patch.object(requests.Session, "request", no_request):
        first = read_or_refuse(CloudEvent.cloudevent, event)
        second = read_or_refuse(CloudEvent.yield_files, event)
    assert first == second


@SETTINGS
@given(document=documents)
@example(document=ID_KEY_MISMATCH_DOCUMENT)
def test_transactioninfo_gives_valid_records_or_invalid_input(document: Any) -> None:
    with mock.patch.object(requests.Session, "request", no_request):
        entries = read_or_refuse(TransactionInfo.transactioninfo, document)
    assert_ids_are_keys(document, entries)


def _download(download_dir: Path, method: str, value: Any) -> Any:
    """Run a Downloader method with requests patched; return ("refused"|"network"|"done", detail)."""
    calls: list[dict[str, Any]] = []

    def fake_request(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        calls.append({"method": method, "url": url, "kwargs": kwargs})
        raise NetworkReached(method)

    # Each example is a run of its own: a cart ledger an earlier example left (its POST "failed", so its cart
    # may exist) would make this run DELETE that cart first, which is not this property's concern.
    shutil.rmtree(download_dir / HIDDEN_DIR / LEDGER_DIR, ignore_errors=True)
    down = Downloader(download_dir, UNREACHABLE, limits=CartLimits(max_files=10**6, max_bytes=2**62))  # one cart
    with mock.patch.object(requests.Session, "request", fake_request):
        try:
            paths = getattr(down, method)(value)
        except (InvalidInputError, PolicyError):
            assert calls == [], "a request was sent for input then refused"
            return "refused", None
        except NetworkReached:
            assert len(calls) == 1, calls
            return "network", calls[0]
    assert calls == []
    return "done", paths


def _check_download(download_dir: Path, method: str, reader: Callable[[Any], Any], value: Any) -> None:
    with mock.patch.object(requests.Session, "request", no_request):
        expected = read_or_refuse(reader, value)
    outcome, detail = _download(download_dir, method, value)
    if outcome == "refused":
        assert expected is None, "the Downloader refused input its reader accepts"
    elif outcome == "network":
        # Valid, non-empty input reached the network: the cart request holds exactly the valid records.
        assert expected, "input the reader refuses reached the network"
        assert detail["method"] == "POST"
        assert detail["url"].startswith(UNREACHABLE + "/")
        body = json.loads(detail["kwargs"]["data"])
        assert_valid_entries(body["fileids"])
        assert body["fileids"] == expected
    else:
        assert expected == [] and detail == []
    assert not list(download_dir.glob("data/**/*")), "files were written without a download"


@SETTINGS
@given(event=events)
@example(event=LONG_NAME_EVENT)
@example(event=NEWLINE_HEX_EVENT)
def test_downloader_cloudevent_never_sends_bad_input(download_dir: Path, event: Any) -> None:
    _check_download(download_dir, "cloudevent", CloudEvent.cloudevent, event)


@SETTINGS
@given(document=documents)
@example(document=ID_KEY_MISMATCH_DOCUMENT)
def test_downloader_transactioninfo_never_sends_bad_input(download_dir: Path, document: Any) -> None:
    _check_download(download_dir, "transactioninfo", TransactionInfo.transactioninfo, document)
    with mock.patch.object(requests.Session, "request", no_request):
        assert_ids_are_keys(document, read_or_refuse(TransactionInfo.transactioninfo, document))
