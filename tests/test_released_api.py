"""Every call of the released 0.3.0 and 0.4.1 API, as their code documents it, on this library.

Written from the released sources (``pacifica/pacifica-python-downloader``
tags 0.3.0 and 0.4.1): the ``Downloader`` and ``CartAPI`` keywords and
attributes, the environment's precedence, the 0.4 call style returning None,
``wait_for_cart(url, int)`` and both signatures of the private
``_download_from_url`` that pacifica-dispatcher calls.  A stub Cartd stands in
where the server must lie; tests/test_released_programs.py runs the real
programs on the real stack.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import requests
from support.events import event_for
from support.helpers import incoming_leftovers
from support.sessions import RecordingSession
from support.stub_cartd import StubCartd
from support.tars import make_tar

from pacifica.downloader import (
    CartAPI,
    CloudEvent,
    Downloader,
    IntegrityError,
    InvalidInputError,
    ManifestError,
    TransactionInfo,
    UnsafeArchiveError,
)
from pacifica.downloader._verified import INDEX_NAME

FILES = {"a/b/foo.txt": b"foo\n" * 8, "a/b/\u00e9/bar\u00e9.txt": "bar\u00e9\n".encode()}
CARTD_VARS = ("CARTD_CART_API_URL", "CARTD_PROTO", "CARTD_ADDR", "CARTD_PORT")


def document_for(files: dict[str, bytes]) -> dict[str, Any]:
    objects = [obj for obj in event_for(files)["data"] if obj.get("destinationTable") == "Files"]
    return {"files": {str(obj["_id"]): obj for obj in objects}}


def tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` but the hidden bookkeeping folder."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and ".pacifica-downloader" not in path.parts
    }


def honest(files: dict[str, bytes]) -> Any:
    return lambda uid, filename: make_tar(filename, files)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in CARTD_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# -- the constructors' keywords and the environment ---------------------------------------


def test_proto_addr_port_keywords(clean_env: pytest.MonkeyPatch) -> None:
    """0.4.1 passed every keyword to CartAPI, which built the URL from proto, addr and port."""
    assert (
        Downloader(proto="https", addr="cart.example.org", port=8443).cart_api.cart_api_url
        == "https://cart.example.org:8443"
    )
    assert Downloader(port="9000").cart_api.cart_api_url == "http://127.0.0.1:9000"
    assert CartAPI(proto="http", addr="::1", port=1).cart_api_url == "http://[::1]:1"


def test_keyword_parts_beat_their_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CARTD_PROTO", "https")
    clean_env.setenv("CARTD_ADDR", "env-host")
    clean_env.setenv("CARTD_PORT", "1111")
    assert Downloader(addr="kw-host").cart_api.cart_api_url == "https://kw-host:1111"
    assert Downloader(proto="http", port=2222).cart_api.cart_api_url == "http://env-host:2222"


def test_url_variable_beats_keyword_parts_as_in_0_4_1(clean_env: pytest.MonkeyPatch) -> None:
    """0.4.1 read CARTD_CART_API_URL before it looked at the parts, whether they were keywords or not."""
    clean_env.setenv("CARTD_CART_API_URL", "http://env-url:1/cart/")
    assert Downloader(proto="https", addr="kw-host", port=2).cart_api.cart_api_url == "http://env-url:1/cart"
    assert Downloader(cart_api_url="http://kw-url:3").cart_api.cart_api_url == "http://kw-url:3"


def test_positional_url_of_0_3_0(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """0.3.0: ``Downloader(location, cart_api_url)`` and ``CartAPI(cart_api_url)``."""
    down = Downloader(str(tmp_path), "http://host:5")
    assert down.location == tmp_path
    assert down.cart_api.cart_api_url == "http://host:5"
    assert CartAPI("http://host:6").cart_api_url == "http://host:6"


def test_cart_api_attributes(clean_env: pytest.MonkeyPatch) -> None:
    """``cart_api.cart_api_url``, ``.auth`` (spread as ``**auth`` by callers) and ``.session``."""
    session = requests.Session()
    auth = {"verify": False, "headers": {"X-Site": "1"}}
    down = Downloader(cart_api_url="http://host:7", auth=auth, session=session)
    assert down.cart_api.cart_api_url == "http://host:7"
    assert down.cart_api.auth == auth
    assert down.cart_api.session is session
    other = requests.Session()
    down.cart_api.session = other
    assert down.cart_api.session is other
    assert Downloader().cart_api.auth == {}


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"location": 5}, "location must be a path"),
        ({"port": "eighty"}, "port must be a number"),
        ({"port": 70000}, "port must be a number"),
        ({"proto": "ftp"}, "proto must be"),
        ({"addr": "a/b"}, "addr must be"),
        ({"session": 5}, "session must be"),
        ({"extra_args": [1]}, "extra_args must be a dict"),
        ({"auth": 5}, "auth must be"),
        ({"timeouts": 60}, "timeouts must be a Timeouts"),
        ({"retry": 3}, "retry must be a Retry"),
        ({"progress": "bar"}, "progress must be a callable"),
    ],
)
def test_bad_constructor_arguments_are_invalid_input(
    clean_env: pytest.MonkeyPatch, kwargs: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidInputError, match=problem):
        Downloader(**kwargs)


# -- the call styles and what they return ------------------------------------------------


def test_0_4_call_style_returns_none(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``sys.exit(main())`` callers (pacifica-cli) need 0.4.1's None, not the list of paths."""
    with StubCartd(body=honest(FILES)) as cartd:
        down = Downloader(cart_api_url=cartd.url)
        assert down.cloudevent(str(tmp_path / "one"), event_for(FILES), timeout=120, filename="data") is None
        assert down.cloudevent(location=str(tmp_path / "two"), cloudevent=event_for(FILES)) is None
        assert down.transactioninfo(str(tmp_path / "three"), document_for(FILES)) is None
        assert down.transactioninfo(tmp_path / "four", transinfo=document_for(FILES), filename="t") is None
    for folder in ("one/data", "two/data", "three/data", "four/t"):
        assert tree(tmp_path / folder) == FILES


def test_seed_style_and_download_return_the_paths(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with StubCartd(body=honest(FILES)) as cartd:
        expected = sorted(str(tmp_path / "data" / path) for path in FILES)
        assert sorted(Downloader(tmp_path, cartd.url).cloudevent(event_for(FILES))) == expected
        assert sorted(Downloader(tmp_path, cartd.url).transactioninfo(document_for(FILES))) == expected
        records = list(CloudEvent.yield_files(event_for(FILES))())
        assert sorted(Downloader(cart_api_url=cartd.url).download(records, tmp_path)) == expected
        assert Downloader(tmp_path, cartd.url).cloudevent(str(tmp_path), {"data": []}) is None


def test_0_4_timeout_as_released_callers_pass_it(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """0.4.1 did ``int(kwargs.get('timeout', 120))``: an int or a numeric string."""
    with StubCartd(body=honest(FILES)) as cartd:
        assert Downloader(cart_api_url=cartd.url).cloudevent(str(tmp_path), event_for(FILES), timeout="600") is None
    assert tree(tmp_path / "data") == FILES


@pytest.mark.parametrize(
    "call, problem",
    [
        (lambda down, loc: down.cloudevent(), "takes the cloudevent"),
        (lambda down, loc: down.cloudevent(loc, {"data": []}, {"data": []}), "takes the cloudevent"),
        (lambda down, loc: down.cloudevent({"data": []}, bogus=1), "unexpected keyword 'bogus'"),
        (lambda down, loc: down.cloudevent(loc, {"data": []}, timeout="soon"), "timeout must be a positive"),
        (lambda down, loc: down.transactioninfo(loc, {"files": {}}, deadline=-1), "deadline must be a positive"),
        (lambda down, loc: down.cloudevent(5, {"data": []}), "location must be a path"),
        (lambda down, loc: down.cloudevent(loc, 5), "CloudEvent must be a JSON object"),
        (lambda down, loc: down.download(5, loc), "records must be a list"),
        (lambda down, loc: down.cloudevent(loc, {"data": []}, filename="../x"), "filename must be one plain"),
        (lambda down, loc: down._download_from_url(), "no cart_url"),
        (lambda down, loc: down._download_from_url(loc, "http://h/1", "data", "x"), "4 positional"),
        (lambda down, loc: down._download_from_url(loc, "ftp://h/1", "data"), "cart_url must be an http"),
        (lambda down, loc: down.cart_api.wait_for_cart("http://h/1", "soon"), "timeout must be a positive"),
    ],
)
def test_bad_call_arguments_are_invalid_input(tmp_path: Path, call: Any, problem: str) -> None:
    """Never a TypeError or ValueError from deep inside, and no request sent."""
    session = RecordingSession(refuse=True)
    down = Downloader(cart_api_url="http://127.0.0.1:9", session=session)
    with pytest.raises(InvalidInputError, match=problem):
        call(down, str(tmp_path))
    assert session.sent == []


# -- the released pieces: setup_cart, wait_for_cart, _download_from_url --------------------


def dispatcher_yield_files(files: dict[str, bytes]) -> Any:
    """What pacifica-dispatcher's RemoteDownloaderRunner hands to setup_cart: int ids, joined paths."""

    def yield_files() -> Any:
        for number, (path, content) in enumerate(files.items(), 103):
            yield {"id": number, "hashsum": hashlib.sha1(content).hexdigest(), "hashtype": "sha1", "path": path}

    return yield_files


def test_wait_for_cart_takes_the_released_integer(clean_env: pytest.MonkeyPatch) -> None:
    with StubCartd(body=honest(FILES)) as cartd:
        api = CartAPI(cart_api_url=cartd.url)
        url = api.setup_cart(dispatcher_yield_files(FILES))
        assert api.wait_for_cart(url, 180) == url
        assert api.wait_for_cart(url, timeout=120) == url


def test_download_from_url_0_4_1_verifies_and_deletes(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The dispatcher's three calls: setup_cart, wait_for_cart, _download_from_url(location, url, 'data')."""
    with StubCartd(body=honest(FILES)) as cartd:
        down = Downloader(cart_api_url=cartd.url)
        url = down.cart_api.setup_cart(dispatcher_yield_files(FILES))
        assert down._download_from_url(str(tmp_path), down.cart_api.wait_for_cart(url, 180), "data") is None
        assert cartd.deleted(url.rsplit("/", 1)[1])
        assert cartd.methods()[-1] == "DELETE"
    assert tree(tmp_path / "data") == FILES
    assert incoming_leftovers(tmp_path) == []
    assert down.cart_api.posted_records(url) is None, "a deleted cart's records are forgotten"


def test_download_from_url_0_3_0_signature(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """0.3.0: ``_download_from_url(cart_url, filename)`` on a downloader built with its location."""
    with StubCartd(body=honest(FILES)) as cartd:
        down = Downloader(str(tmp_path), cartd.url)
        url = down.cart_api.wait_for_cart(down.cart_api.setup_cart(TransactionInfo.yield_files(document_for(FILES))))
        down._download_from_url(url, "mine")
        assert cartd.deleted(url.rsplit("/", 1)[1])
    assert tree(tmp_path / "mine") == FILES


def test_download_from_url_refuses_a_file_that_does_not_match(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A cart this CartAPI created is checked against what was posted: a lying server is caught."""
    lies = dict(FILES, **{"a/b/foo.txt": b"not foo\n"})
    with StubCartd(body=honest(lies)) as cartd:
        down = Downloader(cart_api_url=cartd.url)
        url = down.cart_api.setup_cart(dispatcher_yield_files(FILES))
        with pytest.raises(IntegrityError) as raised:
            down._download_from_url(str(tmp_path), url, "data")
        assert raised.value.path == "a/b/foo.txt"
        assert cartd.deleted(url.rsplit("/", 1)[1]), "the cart is deleted when the download fails too"
    assert not (tmp_path / "data" / "a/b/foo.txt").exists()
    assert incoming_leftovers(tmp_path) == []


def test_download_from_url_refuses_files_not_posted(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with StubCartd(body=honest(dict(FILES, extra=b"x"))) as cartd:
        down = Downloader(cart_api_url=cartd.url)
        url = down.cart_api.setup_cart(dispatcher_yield_files(FILES))
        with pytest.raises(ManifestError, match="nobody asked for"):
            down._download_from_url(str(tmp_path), url, "data")


def test_download_from_url_of_an_unknown_cart_is_unverified_but_safe(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cart URL this downloader never created: the files land, and the log says no hash was checked."""
    with StubCartd(body=honest(FILES)) as cartd:
        url = CartAPI(cartd.url).setup_cart(dispatcher_yield_files(FILES))  # another CartAPI: unknown here
        down = Downloader(cart_api_url=cartd.url)
        with caplog.at_level(logging.WARNING, logger="pacifica.downloader"):
            down._download_from_url(str(tmp_path), url, "data")
        assert cartd.deleted(url.rsplit("/", 1)[1])
    assert tree(tmp_path / "data") == FILES
    assert any("cannot be checked against their hashes" in record.getMessage() for record in caplog.records)
    # Unverified files are never recorded as verified, so a later run hashes them before trusting them.
    with sqlite3.connect(tmp_path / ".pacifica-downloader" / INDEX_NAME) as index:
        assert index.execute("SELECT path FROM verified").fetchall() == []


@pytest.mark.parametrize(
    "body, error",
    [
        (
            lambda uid, filename: make_tar(filename, {"ok.txt": b"ok"}, links={"evil": "/etc/passwd"}),
            "symbolic link|not a regular file",
        ),
        (lambda uid, filename: make_tar(filename, {"../escape.txt": b"x"}), "climbs out"),
        (lambda uid, filename: make_tar("elsewhere", {"x.txt": b"x"}), "not inside the cart's folder"),
    ],
    ids=["symlink", "dotdot", "other-top-folder"],
)
def test_download_from_url_of_an_unknown_cart_refuses_unsafe_tars(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, body: Any, error: str
) -> None:
    location = tmp_path / "loc"
    with StubCartd(body=body) as cartd:
        url = CartAPI(cartd.url).setup_cart(dispatcher_yield_files(FILES))
        with pytest.raises(UnsafeArchiveError, match=error):
            Downloader(cart_api_url=cartd.url)._download_from_url(str(location), url, "data")
        assert cartd.deleted(url.rsplit("/", 1)[1])
    assert [path.name for path in tmp_path.iterdir()] == ["loc"], "nothing is written outside the location"
    assert not [path for path in location.rglob("*") if path.is_symlink()]
    assert set(tree(location)) <= {"data/ok.txt"}, "only the regular file before the refused entry may land"
    assert incoming_leftovers(location) == []


def test_posted_records_are_bounded(clean_env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller that creates carts and never fetches them does not grow the memory without end."""
    from pacifica.downloader import _cartapi as cartapi

    monkeypatch.setattr(cartapi, "REMEMBERED_CARTS", 3)
    with StubCartd() as cartd:
        api = CartAPI(cartd.url)
        urls = [api.setup_cart(dispatcher_yield_files(FILES)) for _ in range(5)]
    assert [api.posted_records(url) is not None for url in urls] == [False, False, True, True, True]
