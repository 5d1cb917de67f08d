"""End-to-end downloads through the real Cartd stack (archive interface, Cartd, Celery, Redis)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from support.events import fresh_id, make_event
from support.helpers import assert_tree, cart_gone, incoming_leftovers
from support.sessions import RecordingSession

from pacifica.downloader import (
    CartAPI,
    CartFailedError,
    CartLimits,
    CartNotFoundError,
    CloudEvent,
    Downloader,
    InvalidInputError,
    Progress,
    TransactionInfo,
)

#: A real Notifications event (a copy of shared/examples/notifications-events.json).
EXAMPLE_EVENT = Path(__file__).resolve().parent / "data" / "notifications-events.json"
SAMPLE = {
    "a/b/foo.txt": b"foo\n" * 32,
    "a/b/bar.txt": b"bar" * 15 + b"\n",
    "data/a/c/\u30d1\u30bd\u30b3\u30f3\u8cc7\u7523\u7ba1\u7406\u53f0\u5e33\uff08S&T HK\uff09_\u73fe\u5730\u8abf\u9054PC.xls": b"xls!",  # noqa: E501
}


def test_seed_example_verbatim(cartd_stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's seed example, as written, against a local Cartd."""
    event = make_event(cartd_stack, SAMPLE)
    monkeypatch.chdir(tmp_path)
    Path("cloudevent.json").write_text(json.dumps(event))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # mkdtemp() below creates its folder here
    # --- the seed's example, with the local Cartd's URL ---
    from json import loads
    from tempfile import mkdtemp

    cloud_event = loads(open("cloudevent.json").read())
    down_path = mkdtemp()
    down = Downloader(down_path, cartd_stack.cart_url)
    written = down.cloudevent(cloud_event)
    # ---
    assert_tree(Path(down_path) / "data", SAMPLE)
    assert sorted(written) == sorted(str(Path(down_path) / "data" / path) for path in SAMPLE)
    assert incoming_leftovers(Path(down_path)) == []


def test_example_event_shape(cartd_stack: Any, tmp_path: Path) -> None:
    """The shipped Notifications example, with its files archived and its hashes made real."""
    event = json.loads(EXAMPLE_EVENT.read_text())
    expected: dict[str, bytes] = {}
    for obj in event["data"]:
        if obj.get("destinationTable") != "Files":
            continue
        obj.setdefault("_id", fresh_id())
        obj["_id"] = fresh_id()  # unique in this archive
        content = "{} {}\n".format(obj["subdir"], obj["name"]).encode() * 3
        cartd_stack.put_file(obj["_id"], content)
        obj["hashsum"] = hashlib.sha1(content).hexdigest()
        obj["size"] = len(content)
        expected["{}/{}".format(obj["subdir"].strip("/"), obj["name"])] = content
    session = RecordingSession()
    written = Downloader(tmp_path, cartd_stack.cart_url, session=session).cloudevent(event)
    assert_tree(tmp_path / "data", expected)
    assert len(written) == 3
    (cart_url,) = session.carts()
    assert ("DELETE", cart_url) in session.sent
    assert cart_gone(cart_url)
    assert [method for method, _ in session.sent].count("GET") == 1, "one GET for the tar; polling uses HEAD"


def test_transaction_info_document(cartd_stack: Any, tmp_path: Path) -> None:
    files = {"x/one.bin": os.urandom(3000), "two.bin": os.urandom(10)}
    event = make_event(cartd_stack, files, hashtype="sha256")
    document = {
        "files": {
            str(obj["_id"]): {k: v for k, v in obj.items() if k != "destinationTable"}
            for obj in event["data"]
            if obj.get("destinationTable") == "Files"
        }
    }
    written = Downloader(tmp_path, cartd_stack.cart_url).transactioninfo(document, filename="trans")
    assert_tree(tmp_path / "trans", files)
    assert len(written) == 2


@pytest.mark.parametrize("mode", ["bundle-in-request", "bundle-server"])
def test_bundled_carts_land_under_filename(cartd_stack: Any, tmp_path: Path, mode: str) -> None:
    """With bundling the tar's top folder is the cart uid; files must still land in location/<filename>."""
    files = {f"deep/er/f{index}.dat": os.urandom(700 + index) for index in range(5)}
    event = make_event(cartd_stack, files)
    if mode == "bundle-in-request":
        down = Downloader(tmp_path, cartd_stack.cart_url, extra_args={"bundle": True})
    else:
        down = Downloader(tmp_path, cartd_stack.bundle_cart_url)
    down.cloudevent(event, filename="mydata")
    assert_tree(tmp_path / "mydata", files)


def test_released_call_style(cartd_stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """0.4-style: URL from the environment, auth dict, location with each call, timeout and filename keywords."""
    files = {"old/style.txt": b"still works\n"}
    event = make_event(cartd_stack, files)
    monkeypatch.setenv("CARTD_CART_API_URL", cartd_stack.cart_url)
    session = RecordingSession()
    down = Downloader(auth={"headers": {"X-Test": "1"}, "verify": True}, session=session)
    written = down.cloudevent(str(tmp_path), event, timeout=120, filename="old")
    assert_tree(tmp_path / "old", files)
    assert written is None, "0.4.1 returned None; sys.exit(main()) callers must exit 0"
    written = down.cloudevent(location=str(tmp_path / "kw"), cloudevent=event)
    assert_tree(tmp_path / "kw" / "data", files)
    assert written is None


def test_cartapi_pieces(cartd_stack: Any) -> None:
    """The documented internals: setup_cart -> URL, wait_for_cart -> URL, GET streams the tar."""
    event = make_event(cartd_stack, {"p/q.txt": b"q"})
    api = CartAPI(cartd_stack.cart_url)
    cart_url = api.setup_cart(CloudEvent.yield_files(event))
    assert cart_url.startswith(cartd_stack.cart_url + "/")
    assert api.wait_for_cart(cart_url, timeout=60) == cart_url
    assert api.delete_cart(cart_url) is True
    assert cart_gone(cart_url)
    with pytest.raises(CartNotFoundError):
        api.wait_for_cart(cart_url, timeout=60)
    assert api.delete_cart(cart_url) is False


def test_transactioninfo_yield_files_alias() -> None:
    document = {
        "files": {
            "103": {"_id": 103, "name": "n", "subdir": "s", "hashtype": "md5", "hashsum": hashlib.md5(b"").hexdigest()}
        }
    }
    assert list(TransactionInfo.yield_files(document)()) == [
        {"id": "103", "path": "s/n", "hashtype": "md5", "hashsum": hashlib.md5(b"").hexdigest()}
    ]


@pytest.mark.parametrize("fault", ["wrong-hash", "unknown-id"])
def test_failed_cart(cartd_stack: Any, tmp_path: Path, fault: str) -> None:
    """A cart Cartd cannot stage: typed error with the server's reason, nothing on disk, cart deleted."""
    files = {"good.txt": b"good", "bad.txt": b"bad"}
    event = make_event(cartd_stack, files)
    bad = event["data"][-1]
    if fault == "wrong-hash":
        bad["hashsum"] = hashlib.sha1(b"something else").hexdigest()
    else:
        bad["_id"] = fresh_id()  # never archived
    session = RecordingSession()
    with pytest.raises(CartFailedError) as raised:
        Downloader(tmp_path, cartd_stack.cart_url, session=session).cloudevent(event)
    assert "Failed to pull" in str(raised.value) or "Failed to stage" in str(raised.value)
    assert len(str(raised.value)) < 800, "a server traceback is summarised"
    assert raised.value.server_message
    assert_tree(tmp_path, {})
    (cart_url,) = session.carts()
    assert ("DELETE", cart_url) in session.sent
    assert cart_gone(cart_url)


def test_empty_event_makes_no_cart(cartd_stack: Any, tmp_path: Path) -> None:
    session = RecordingSession()
    event = {"data": [{"destinationTable": "Transactions._id", "value": 1}]}
    assert Downloader(tmp_path, cartd_stack.cart_url, session=session).cloudevent(event) == []
    assert session.sent == []


def test_bad_input_sends_nothing(cartd_stack: Any, tmp_path: Path) -> None:
    session = RecordingSession()
    event = make_event(cartd_stack, {"ok.txt": b"ok"})
    event["data"].append(
        {
            "destinationTable": "Files",
            "_id": 5,
            "name": "../../etc/passwd",
            "subdir": "",
            "hashtype": "sha1",
            "hashsum": "0" * 40,
        }
    )
    event["data"].append({"destinationTable": "Files", "name": "x", "hashtype": "sha1"})
    with pytest.raises(InvalidInputError) as raised:
        Downloader(tmp_path, cartd_stack.cart_url, session=session).cloudevent(event)
    assert len(raised.value.problems) == 2
    assert session.sent == []


def test_rerun_fetches_only_what_is_missing(cartd_stack: Any, tmp_path: Path) -> None:
    files = {f"r/{index}.bin": os.urandom(100 + index) for index in range(6)}
    event = make_event(cartd_stack, files)
    down = Downloader(tmp_path, cartd_stack.cart_url)
    down.cloudevent(event)
    (tmp_path / "data" / "r/2.bin").unlink()
    (tmp_path / "data" / "r/4.bin").write_bytes(b"changed")
    session = RecordingSession()
    again = Downloader(tmp_path, cartd_stack.cart_url, session=session)
    again.cloudevent(event)
    assert_tree(tmp_path / "data", files)
    assert len(session.carts()) == 1
    session.clear()
    again.cloudevent(event)
    assert session.sent == [], "nothing missing: no cart"


class Interrupt(BaseException):
    """Stands in for Ctrl-C (KeyboardInterrupt) raised from inside the download."""


@pytest.mark.parametrize("phase", ["staging", "transferring", "verifying"])
def test_interrupt_deletes_cart_and_leaves_nothing_partial(cartd_stack: Any, tmp_path: Path, phase: str) -> None:
    files = {f"i/{index}.bin": os.urandom(200_000) for index in range(4)}
    event = make_event(cartd_stack, files)
    session = RecordingSession()

    def progress(report: Progress) -> None:
        if report.phase == phase and (phase != "transferring" or report.bytes_done > 0):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Downloader(tmp_path, cartd_stack.cart_url, session=session, progress=progress).cloudevent(event)
    (cart_url,) = session.carts()
    assert ("DELETE", cart_url) in session.sent
    assert cart_gone(cart_url)
    assert incoming_leftovers(tmp_path) == []
    on_disk = (
        {str(p.relative_to(tmp_path / "data")): p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()}
        if (tmp_path / "data").exists()
        else {}
    )
    assert all(files[path] == content for path, content in on_disk.items()), "only verified files"


def test_keep_cart(cartd_stack: Any, tmp_path: Path) -> None:
    event = make_event(cartd_stack, {"k.txt": b"keep"})
    session = RecordingSession()
    Downloader(tmp_path, cartd_stack.cart_url, session=session, keep_cart=True).cloudevent(event)
    (cart_url,) = session.carts()
    assert not cart_gone(cart_url)
    assert CartAPI(cartd_stack.cart_url).delete_cart(cart_url)


@pytest.mark.parametrize("max_staging", [1, 2])
def test_large_event_is_split_into_pipelined_carts(cartd_stack: Any, tmp_path: Path, max_staging: int) -> None:
    files = {f"s/{index:02d}.bin": os.urandom(1000 + index) for index in range(25)}
    event = make_event(cartd_stack, files)
    session = RecordingSession()
    limits = CartLimits(max_files=10, max_staging=max_staging)
    written = Downloader(tmp_path, cartd_stack.cart_url, session=session, limits=limits).cloudevent(event)
    assert_tree(tmp_path / "data", files)
    assert len(written) == 25
    carts = session.carts()
    assert len(carts) == 5  # small first and last carts (1/8 of max_files, at least one file), 13 files cut evenly, 10
    if max_staging == 1:
        assert session.posted == [1, 7, 6, 10, 1]  # staged in the order they were cut
    assert sorted(url for method, url in session.sent if method == "DELETE") == sorted(carts)
    assert all(cart_gone(url) for url in carts)


def test_split_by_bytes(cartd_stack: Any, tmp_path: Path) -> None:
    files = {f"b/{index}.bin": os.urandom(40_000) for index in range(5)}
    event = make_event(cartd_stack, files)
    session = RecordingSession()
    limits = CartLimits(max_bytes=100_000)
    Downloader(tmp_path, cartd_stack.cart_url, session=session, limits=limits).cloudevent(event)
    assert_tree(tmp_path / "data", files)
    assert len(session.carts()) == 4  # 40 kB files under a 100 kB cap: 1 (1/8 of the cap), 2, 1 (half), 1 (1/8)


def test_failure_in_one_cart_fails_the_call_and_deletes_every_cart(cartd_stack: Any, tmp_path: Path) -> None:
    files = {f"f/{index:02d}.bin": os.urandom(500) for index in range(12)}
    event = make_event(cartd_stack, files)
    event["data"][-1]["_id"] = fresh_id()  # never archived: the last cart fails at once
    session = RecordingSession()
    limits = CartLimits(max_files=4, max_staging=2)
    with pytest.raises(CartFailedError):
        Downloader(tmp_path, cartd_stack.cart_url, session=session, limits=limits).cloudevent(event)
    carts = session.carts()
    assert carts, "carts were created"
    assert sorted(url for method, url in session.sent if method == "DELETE") == sorted(carts)
    assert all(cart_gone(url) for url in carts)
    assert incoming_leftovers(tmp_path) == []
    for path in (tmp_path / "data").rglob("*") if (tmp_path / "data").exists() else []:
        if path.is_file():
            assert path.read_bytes() == files[str(path.relative_to(tmp_path / "data"))], "only verified files"


def test_rerun_trusts_the_verified_index_until_a_file_changes(
    cartd_stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {"v/a.bin": os.urandom(5000), "v/b.bin": os.urandom(5000)}
    event = make_event(cartd_stack, files)
    Downloader(tmp_path, cartd_stack.cart_url).cloudevent(event)
    import pacifica.downloader._plan as module

    hashed: list[str] = []
    real_digest = module.file_digest

    def counting_digest(path: Path, hashtype: str) -> Any:
        hashed.append(path.name)
        return real_digest(path, hashtype)

    monkeypatch.setattr(module, "file_digest", counting_digest)
    session = RecordingSession()
    Downloader(tmp_path, cartd_stack.cart_url, session=session).cloudevent(event)
    assert hashed == [] and session.sent == [], "unchanged verified files are neither read nor fetched"
    # Same size, same mtime, other content: the change time gives it away.
    target = tmp_path / "data" / "v/a.bin"
    before = os.stat(target)
    target.write_bytes(os.urandom(5000))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    Downloader(tmp_path, cartd_stack.cart_url, session=session).cloudevent(event)
    assert hashed == ["a.bin"]
    assert len(session.carts()) == 1
    assert_tree(tmp_path / "data", files)
    hashed.clear()
    Downloader(tmp_path, cartd_stack.cart_url, trust_verified=False).cloudevent(event)
    assert sorted(hashed) == ["a.bin", "b.bin"], "trust_verified=False hashes every file"
