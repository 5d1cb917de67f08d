"""The ``pacifica-downloader`` command, without a real Cartd.

A small stub of Cartd (and of the Policy service's ``/status/transactions/by_id``)
runs in a thread on loopback; the command runs in-process through
:func:`pacifica.downloader._cli.main` or, for what needs a real process (a
pseudo-terminal, the logs of ``-vv``), as ``python -m pacifica.downloader``.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from support.events import files_object
from support.helpers import is_index_file
from support.processes import run_on_pty, subprocess_env
from support.stub_cartd import StubCartd
from support.tars import make_tar

from pacifica.downloader import PolicyError
from pacifica.downloader import _cli as cli
from pacifica.downloader._cli import auth_from_environment, build_parser, exit_code_for, load_json, main
from pacifica.downloader._cli.display import (
    LineDisplay,
    SafeDisplay,
    TqdmDisplay,
    format_size,
    make_display,
    terminal_shape,
)
from pacifica.downloader._cli.output import EXIT_CODES
from pacifica.downloader._exceptions import (
    CartError,
    CartFailedError,
    CartNotFoundError,
    CartTimeoutError,
    DestinationError,
    DownloaderError,
    IntegrityError,
    InvalidInputError,
    ManifestError,
    TransferError,
    UnsafeArchiveError,
)
from pacifica.downloader._progress import Progress

SECRET_PASSWORD = "pw-Sup3rS3cret-91"
SECRET_TOKEN = "tok-Sup3rS3cret-77"

# -- an archive behind the stub Cartd ----------------------------------------------------------


class CartdStub:
    """An archive served by the one stub Cartd (stub_cartd.StubCartd), plus Policy's transaction documents.

    POST stores the cart; HEAD answers per ``status`` (``ready``: 204 ready,
    ``staging``: 204 staging, ``error``: 500 error); GET sends a tar whose top
    folder is the ``filename`` query value holding the files the cart was
    posted with, from ``archive`` (``corrupt`` flips a byte of each); DELETE
    forgets the cart.  ``polled`` is set by the first HEAD.
    """

    def __init__(self) -> None:
        self.archive: dict[str, bytes] = {}
        self.transactions: dict[str, Any] = {}
        self.status = "ready"
        self.corrupt = False
        self.polled = threading.Event()
        self.server = StubCartd(body=self._tar, head=self._head, pages=self._page)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def requests(self) -> list[tuple[str, str, dict[str, str]]]:
        """(method, path, headers) of every request, in order."""
        return [(request.method, urlsplit(request.path).path, request.headers) for request in self.server.requests]

    @property
    def carts(self) -> dict[str, Any]:
        """The carts that exist now, with the ``fileids`` each was posted with."""
        return self.server.live_carts()

    def methods(self) -> list[str]:
        return self.server.methods()

    def _head(self) -> tuple[int, dict[str, str]]:
        self.polled.set()
        if self.status == "error":
            return 500, {"X-Pacifica-Status": "error", "X-Pacifica-Message": "the file hash did not match"}
        return 204, {"X-Pacifica-Status": self.status, "X-Pacifica-Message": ""}

    def _page(self, path: str) -> tuple[int, bytes] | None:
        """Policy's ``GET /status/transactions/by_id/<id>``: an unknown id is HTTP 200 and Metadata's error document."""
        prefix = "/status/transactions/by_id/"
        if not path.startswith(prefix):
            return None
        number = path[len(prefix) :]
        document = self.transactions.get(
            number,
            {
                "status": "404 Not Found",
                "message": f"No Transaction with an ID of {number} was found",
                "traceback": "Traceback (most recent call last): ...",
                "version": "18.10.0",
            },
        )
        return 200, json.dumps(document).encode()

    def _tar(self, uid: str, filename: str) -> bytes:
        def content(data: bytes) -> bytes:
            return bytes([data[0] ^ 0xFF]) + data[1:] if self.corrupt and data else data

        fileids = self.server.live_carts()[uid]
        return make_tar(
            filename.replace(".tar", ""), {entry["path"]: content(self.archive[entry["id"]]) for entry in fileids}
        )

    def add(self, file_id: str, subdir: str, name: str, data: bytes, with_size: bool = True) -> dict[str, Any]:
        """Store ``data`` and return its ``Files`` metadata object."""
        self.archive[file_id] = data
        path = f"{subdir}/{name}" if subdir else name
        obj = files_object(int(file_id), path, data)
        del obj["mimetype"]
        if not with_size:
            del obj["size"]
        return obj


@pytest.fixture
def stub() -> Iterator[CartdStub]:
    archive = CartdStub()
    with archive.server:
        yield archive


FILES = {
    "101": ("a/b", "small.txt", b"hello, pacifica\n"),
    "102": ("a", "big.bin", bytes(range(256)) * 1200),  # 300 kB: many progress reports
}


def event_of(stub: CartdStub, files: dict[str, tuple[str, str, bytes]] = FILES) -> dict[str, Any]:
    data: list[dict[str, Any]] = [{"destinationTable": "Transactions._id", "value": 67}]
    for file_id, (subdir, name, content) in files.items():
        data.append(stub.add(file_id, subdir, name, content))
    return {"specversion": "1.0", "id": "ev-1", "type": "org.pacifica.metadata.ingest", "data": data}


def write_json(path: Path, value: Any) -> str:
    path.write_text(json.dumps(value))
    return str(path)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials, cart URL or proxy from the developer's environment."""
    for name in list(os.environ):
        if name.startswith(("PACIFICA_DOWNLOADER_", "CARTD_")) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def no_requests(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Make any HTTP request fail the test; return the list of attempted requests (always empty)."""
    sent: list[Any] = []

    def refuse(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((method, url))
        raise AssertionError(f"no request may be sent, got {method} {url}")

    monkeypatch.setattr(requests.Session, "request", refuse)
    return sent


# -- argument parsing ---------------------------------------------------------------------


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["cloudevent", "event.json"])
    assert args.command == "cloudevent"
    assert args.event == "event.json"
    assert args.destination == "."
    assert args.filename == "data"
    assert args.cart_url is None  # the library resolves it from the environment
    assert args.timeout is None
    assert (args.quiet, args.verbose, args.json, args.keep_cart, args.no_overwrite) == (False, 0, False, False, False)
    assert (args.ca_bundle, args.insecure) == (None, False)


def test_parser_every_option() -> None:
    args = build_parser().parse_args(
        [
            "transactioninfo",
            "--transaction-id",
            "42",
            "--policy-url",
            "https://policy.example/",
            "-d",
            "/tmp/x",
            "--cart-url",
            "https://cart.example",
            "--filename",
            "stuff",
            "--timeout",
            "2.5",
            "--ca-bundle",
            "/etc/ca.pem",
            "-vv",
            "--json",
            "--keep-cart",
            "--no-overwrite",
        ]
    )
    assert args.command == "transactioninfo"
    assert args.document is None
    assert args.transaction_id == 42
    assert args.policy_url == "https://policy.example/"
    assert (args.destination, args.cart_url, args.filename, args.timeout) == (
        "/tmp/x",
        "https://cart.example",
        "stuff",
        2.5,
    )
    assert (args.ca_bundle, args.verbose, args.json, args.keep_cart, args.no_overwrite) == (
        "/etc/ca.pem",
        2,
        True,
        True,
        True,
    )


def test_help_lists_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert main(["cloudevent", "--help"]) == 0
    sub = capsys.readouterr().out
    assert set(EXIT_CODES) >= {0, 2, 3, 4, 5, 6, 130}
    for text in (top, sub):
        assert "exit status:" in text
        for code in EXIT_CODES:
            assert f"\n  {code:>3}  " in text
        assert "PACIFICA_DOWNLOADER_TOKEN" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("pacifica-downloader ")


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "required"),
        (["nonsense"], "invalid choice"),
        (["cloudevent"], "required"),
        (["cloudevent", "e.json", "--bogus"], "unrecognized arguments"),
        (["cloudevent", "e.json", "-q", "-v"], "not allowed with"),
        (["cloudevent", "e.json", "--ca-bundle", "x.pem", "--insecure"], "not allowed with"),
        (["cloudevent", "e.json", "--timeout", "0"], "positive"),
        (["cloudevent", "e.json", "--timeout", "soon"], "not a number"),
        (["cloudevent", "e.json", "--cart-url", "ftp://cart"], "http:// or https://"),
        (["cloudevent", "e.json", "--cart-url", "http://me:hunter2@cart"], "PACIFICA_DOWNLOADER_USER"),
        (["transactioninfo"], "give DOC.json"),
        (["transactioninfo", "d.json", "--transaction-id", "1", "--policy-url", "http://p"], "not both"),
        (["transactioninfo", "--transaction-id", "1"], "needs --policy-url"),
        (["transactioninfo", "d.json", "--policy-url", "http://p"], "only used with"),
        (["transactioninfo", "--transaction-id", "x", "--policy-url", "http://p"], "transaction id"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str], no_requests: list[Any]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pacifica-downloader" in err and "error: " in err
    assert expected in err
    assert "hunter2" not in err
    assert no_requests == []


# -- input files -------------------------------------------------------------------------


def test_invalid_json_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_requests: list[Any]) -> None:
    bad = tmp_path / "event.json"
    bad.write_text('{"data": [')
    assert main(["cloudevent", str(bad), "-d", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pacifica-downloader: error: {bad} is not valid JSON")
    assert "Traceback" not in err


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_requests: list[Any]) -> None:
    assert main(["transactioninfo", str(tmp_path / "nope.json")]) == 2
    assert "pacifica-downloader: error: cannot read {}".format(tmp_path / "nope.json") in capsys.readouterr().err


def test_not_an_event_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_requests: list[Any]) -> None:
    assert main(["cloudevent", write_json(tmp_path / "e.json", [1, 2]), "-d", str(tmp_path)]) == 2
    assert "a CloudEvent must be a JSON object" in capsys.readouterr().err


def test_load_json_from_stdin() -> None:
    assert load_json("-", io.TextIOWrapper(io.BytesIO(b'{"data": []}'))) == {"data": []}
    with pytest.raises(InvalidInputError, match="standard input is not valid JSON"):
        load_json("-", io.StringIO("{"))


def test_unsafe_path_exits_2_without_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_requests: list[Any]
) -> None:
    event = {
        "data": [
            {
                "destinationTable": "Files",
                "_id": 1,
                "name": "passwd",
                "subdir": "../../etc",
                "hashtype": "sha1",
                "hashsum": "0" * 40,
            }
        ]
    }
    out = tmp_path / "out"
    assert main(["cloudevent", write_json(tmp_path / "e.json", event), "-d", str(out), "--cart-url", "http://x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pacifica-downloader: error: the event's Files records cannot be downloaded")
    assert "climbs out" in err
    assert no_requests == []
    assert not (tmp_path / "etc").exists()


def test_empty_event_prints_empty_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_requests: list[Any]
) -> None:
    event = {"specversion": "1.0", "id": "x", "data": [{"destinationTable": "Transactions._id", "value": 1}]}
    assert main(["cloudevent", write_json(tmp_path / "e.json", event), "-d", str(tmp_path / "o"), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == []
    assert "nothing to download" in captured.err
    assert no_requests == []


def test_many_problems_are_capped_unless_verbose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_requests: list[Any]
) -> None:
    event = {
        "data": [
            {
                "destinationTable": "Files",
                "_id": i,
                "name": "f",
                "subdir": f"/abs{i}",
                "hashtype": "sha1",
                "hashsum": "0" * 40,
            }
            for i in range(30)
        ]
    }
    path = write_json(tmp_path / "e.json", event)
    assert main(["cloudevent", path, "-d", str(tmp_path)]) == 2
    short = capsys.readouterr().err
    assert "... and 20 more (-v shows all)" in short
    assert main(["cloudevent", path, "-d", str(tmp_path), "-v"]) == 2
    assert capsys.readouterr().err.count("is absolute") == 30


# -- credentials and TLS -------------------------------------------------------------------


def test_auth_from_environment_builds_requests_arguments(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("cert")
    key.write_text("key")
    user = {"PACIFICA_DOWNLOADER_USER": "ann", "PACIFICA_DOWNLOADER_PASSWORD": "pw"}
    assert auth_from_environment({}) == {}
    assert auth_from_environment(user) == {"auth": ("ann", "pw")}
    assert auth_from_environment({"PACIFICA_DOWNLOADER_TOKEN": "t"}) == {"headers": {"Authorization": "Bearer t"}}
    assert auth_from_environment({"PACIFICA_DOWNLOADER_CERT": str(cert)}) == {"cert": str(cert)}
    assert auth_from_environment(
        dict(user, PACIFICA_DOWNLOADER_CERT=str(cert), PACIFICA_DOWNLOADER_KEY=str(key)), ca_bundle=str(cert)
    ) == {"auth": ("ann", "pw"), "cert": (str(cert), str(key)), "verify": str(cert)}
    assert auth_from_environment({"PACIFICA_DOWNLOADER_TOKEN": ""}, insecure=True) == {"verify": False}


@pytest.mark.parametrize(
    "environ, options, message",
    [
        ({"PACIFICA_DOWNLOADER_USER": "ann"}, {}, "PACIFICA_DOWNLOADER_PASSWORD is not"),
        ({"PACIFICA_DOWNLOADER_PASSWORD": "pw"}, {}, "PACIFICA_DOWNLOADER_USER is not"),
        (
            {"PACIFICA_DOWNLOADER_USER": "a", "PACIFICA_DOWNLOADER_PASSWORD": "p", "PACIFICA_DOWNLOADER_TOKEN": "t"},
            {},
            "not both",
        ),
        ({"PACIFICA_DOWNLOADER_KEY": "k.pem"}, {}, "PACIFICA_DOWNLOADER_CERT is not"),
        ({"PACIFICA_DOWNLOADER_CERT": "/no/such/cert.pem"}, {}, "names no file"),
        ({}, {"ca_bundle": "/no/such/ca.pem"}, "names no file"),
    ],
)
def test_auth_from_environment_refuses_bad_settings(
    environ: dict[str, str], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        auth_from_environment(environ, **options)


def test_incomplete_credentials_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], no_requests: list[Any]
) -> None:
    monkeypatch.setenv("PACIFICA_DOWNLOADER_PASSWORD", SECRET_PASSWORD)
    assert main(["cloudevent", write_json(tmp_path / "e.json", {"data": []})]) == 2
    err = capsys.readouterr().err
    assert "PACIFICA_DOWNLOADER_PASSWORD is set but PACIFICA_DOWNLOADER_USER is not" in err
    assert SECRET_PASSWORD not in err


def test_insecure_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_requests: list[Any]) -> None:
    assert main(["cloudevent", write_json(tmp_path / "e.json", {"data": []}), "-d", str(tmp_path), "--insecure"]) == 0
    err = capsys.readouterr().err
    assert "pacifica-downloader: warning: --insecure: TLS certificates are not verified" in err


def test_credentials_and_tls_reach_every_request(
    stub: CartdStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The basic credentials and the --ca-bundle go with the POST, HEAD, GET and DELETE alike."""
    seen: list[dict[str, Any]] = []
    original = requests.Session.request

    def spy(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(dict(kwargs, method=method))
        kwargs.pop("verify", None)  # the stub speaks plain HTTP
        return original(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", spy)
    monkeypatch.setenv("PACIFICA_DOWNLOADER_USER", "ann")
    monkeypatch.setenv("PACIFICA_DOWNLOADER_PASSWORD", SECRET_PASSWORD)
    ca = tmp_path / "ca.pem"
    ca.write_text("not really")
    event = write_json(tmp_path / "e.json", event_of(stub))
    assert main(["cloudevent", event, "-d", str(tmp_path / "o"), "--cart-url", stub.url, "--ca-bundle", str(ca)]) == 0
    assert [call["method"] for call in seen] == ["POST", "HEAD", "GET", "DELETE"]
    assert all(call["auth"] == ("ann", SECRET_PASSWORD) and call["verify"] == str(ca) for call in seen)
    expected = "Basic " + base64.b64encode(f"ann:{SECRET_PASSWORD}".encode()).decode()
    assert all(headers.get("Authorization") == expected for _, _, headers in stub.requests)


# -- downloads against the stub ----------------------------------------------------------------


def test_download_with_json_manifest(stub: CartdStub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    event = write_json(tmp_path / "e.json", event_of(stub))
    assert main(["cloudevent", event, "-d", str(out), "--cart-url", stub.url, "--json"]) == 0
    captured = capsys.readouterr()
    entries = json.loads(captured.out)
    assert [entry["path"] for entry in entries] == [
        str((out / "data" / subdir / name).resolve()) for subdir, name, _ in FILES.values()
    ]
    for entry, (_, _, content) in zip(entries, FILES.values()):
        assert Path(entry["path"]).read_bytes() == content
        assert entry == {
            "path": entry["path"],
            "size": len(content),
            "hashtype": "sha1",
            "hashsum": hashlib.sha1(content).hexdigest(),
        }
    assert stub.methods() == ["POST", "HEAD", "GET", "DELETE"]
    assert "pacifica-downloader: 2 files (307.2 kB) in " in captured.err
    assert str(out.resolve() / "data") in captured.err
    # No progress display: stderr is not a terminal here.
    assert "staging" not in captured.err and "\r" not in captured.err

    # Again: everything is present and verified, so no cart at all.
    assert main(["cloudevent", event, "-d", str(out), "--cart-url", stub.url, "--json", "--filename", "data"]) == 0
    assert json.loads(capsys.readouterr().out) == entries
    assert stub.methods() == ["POST", "HEAD", "GET", "DELETE"]


def test_event_from_stdin_quiet_keep_cart(
    stub: CartdStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(event_of(stub)).encode())))
    assert (
        main(
            ["cloudevent", "-", "-d", str(tmp_path), "--cart-url", stub.url, "-q", "--keep-cart", "--filename", "mine"]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert (tmp_path / "mine" / "a" / "b" / "small.txt").read_bytes() == FILES["101"][2]
    assert stub.methods() == ["POST", "HEAD", "GET"]  # --keep-cart: no DELETE


def test_transactioninfo_document_file(stub: CartdStub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = {obj["_id"]: obj for obj in event_of(stub)["data"][1:]}
    doc = {"files": {str(key): dict(obj, _id=key) for key, obj in files.items()}}
    assert (
        main(
            [
                "transactioninfo",
                write_json(tmp_path / "t.json", doc),
                "-d",
                str(tmp_path),
                "--cart-url",
                stub.url,
                "--json",
            ]
        )
        == 0
    )
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert (tmp_path / "data" / "a" / "big.bin").read_bytes() == FILES["102"][2]


def policy_argv(stub: CartdStub, policy_url: str, tmp_path: Path) -> list[str]:
    """``transactioninfo`` of transaction 67 through ``policy_url``, into ``tmp_path``, from the stub's Cartd."""
    return [
        "transactioninfo",
        "--transaction-id",
        "67",
        "--policy-url",
        policy_url,
        "-d",
        str(tmp_path),
        "--cart-url",
        stub.url,
    ]


def test_transactioninfo_fetched_from_policy_with_token(
    stub: CartdStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {str(obj["_id"]): obj for obj in event_of(stub)["data"][1:]}
    stub.transactions["67"] = {"files": files}
    monkeypatch.setenv("PACIFICA_DOWNLOADER_TOKEN", SECRET_TOKEN)
    assert main(policy_argv(stub, stub.url + "/", tmp_path)) == 0
    assert (tmp_path / "data" / "a" / "b" / "small.txt").exists()
    assert [(method, path) for method, path, _ in stub.requests][0] == ("GET", "/status/transactions/by_id/67")
    assert all(headers.get("Authorization") == "Bearer " + SECRET_TOKEN for _, _, headers in stub.requests)


@pytest.mark.parametrize("suffix", ["", "/", "/status/transactions/by_id", "/status/transactions/by_id/"])
def test_policy_url_is_the_root_or_pacifica_clis_by_id_url(stub: CartdStub, tmp_path: Path, suffix: str) -> None:
    stub.transactions["67"] = {"files": {str(obj["_id"]): obj for obj in event_of(stub)["data"][1:]}}
    assert main([*policy_argv(stub, stub.url + suffix, tmp_path), "-q"]) == 0
    assert [path for method, path, _ in stub.requests if method == "GET"][0] == "/status/transactions/by_id/67"


def test_unknown_transaction_exits_3_before_any_cart(
    stub: CartdStub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Policy answers an unknown id with HTTP 200 and an error document: an error, not an empty download."""
    assert (
        main(
            [
                "transactioninfo",
                "--transaction-id",
                "68",
                "--policy-url",
                stub.url,
                "-d",
                str(tmp_path),
                "--cart-url",
                stub.url,
            ]
        )
        == 3
    )
    err = capsys.readouterr().err
    assert err.startswith("pacifica-downloader: error: the policy service gave no files for transaction 68")
    assert "404 Not Found: No Transaction with an ID of 68 was found" in err
    assert "Traceback" not in err
    assert stub.methods() == ["GET"], "no cart"


def test_cart_failure_exits_3_in_one_line(stub: CartdStub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stub.status = "error"
    out = tmp_path / "out"
    assert (
        main(["cloudevent", write_json(tmp_path / "e.json", event_of(stub)), "-d", str(out), "--cart-url", stub.url])
        == 3
    )
    err = capsys.readouterr().err
    assert err.startswith("pacifica-downloader: error: Cartd could not stage the cart: the file hash did not match")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    methods = stub.methods()  # after the DELETE, only the checks that the failed cart stayed deleted
    assert "DELETE" in methods and set(methods[methods.index("DELETE") + 1 :]) <= {"HEAD", "DELETE"}
    assert not any(path.is_file() and not is_index_file(out, path) for path in out.rglob("*"))


def test_traceback_only_with_vv(stub: CartdStub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stub.status = "error"
    argv = ["cloudevent", write_json(tmp_path / "e.json", event_of(stub)), "-d", str(tmp_path), "--cart-url", stub.url]
    assert main(argv + ["-vv"]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "pacifica-downloader: error: Cartd could not stage the cart" in err
    assert "server message: the file hash did not match" in err


def test_corrupt_file_exits_4_and_leaves_nothing(
    stub: CartdStub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.corrupt = True
    out = tmp_path / "out"
    assert (
        main(["cloudevent", write_json(tmp_path / "e.json", event_of(stub)), "-d", str(out), "--cart-url", stub.url])
        == 4
    )
    assert "does not match its sha1 hash" in capsys.readouterr().err
    assert not any(path.is_file() and not is_index_file(out, path) for path in out.rglob("*"))
    assert stub.methods()[-1] == "DELETE"


def test_cart_timeout_exits_5(stub: CartdStub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stub.status = "staging"
    assert (
        main(
            [
                "cloudevent",
                write_json(tmp_path / "e.json", event_of(stub)),
                "-d",
                str(tmp_path),
                "--cart-url",
                stub.url,
                "--timeout",
                "0.2",
            ]
        )
        == 5
    )
    assert "was still 'staging' after" in capsys.readouterr().err
    methods = stub.methods()
    assert "DELETE" in methods and set(methods[methods.index("DELETE") + 1 :]) <= {"HEAD", "DELETE"}


def test_no_overwrite_conflict_exits_6(stub: CartdStub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    event = write_json(tmp_path / "e.json", event_of(stub))
    existing = tmp_path / "data" / "a" / "b" / "small.txt"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"someone else's")
    assert main(["cloudevent", event, "-d", str(tmp_path), "--cart-url", stub.url, "--no-overwrite"]) == 6
    assert "overwrite=False" in capsys.readouterr().err
    assert existing.read_bytes() == b"someone else's"
    assert stub.methods() == []


def test_destination_that_is_a_file_exits_6(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    event = {
        "data": [
            {"destinationTable": "Files", "_id": 1, "name": "n", "subdir": "", "hashtype": "sha1", "hashsum": "0" * 40}
        ]
    }
    assert main(["cloudevent", write_json(tmp_path / "e.json", event), "-d", str(tmp_path / "file" / "sub")]) == 6
    assert capsys.readouterr().err.startswith("pacifica-downloader: error: ")


def test_unreachable_cart_service_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        raise requests.exceptions.ConnectionError("connection refused")

    monkeypatch.setattr(requests.Session, "request", refuse)
    monkeypatch.setattr("pacifica.downloader._retry.Retry.delay", lambda self, attempt, retry_after=None: 0.0)
    event = {
        "data": [
            {"destinationTable": "Files", "_id": 1, "name": "n", "subdir": "", "hashtype": "sha1", "hashsum": "0" * 40}
        ]
    }
    assert (
        main(
            [
                "cloudevent",
                write_json(tmp_path / "e.json", event),
                "-d",
                str(tmp_path),
                "--cart-url",
                "http://127.0.0.1:9",
            ]
        )
        == 3
    )
    err = capsys.readouterr().err
    assert "\npacifica-downloader: error: POST http://127.0.0.1:9/" in err
    assert "pacifica-downloader: warning: POST http://127.0.0.1:9/" in err  # the retries are logged
    assert "connection refused" in err


class _InterruptingDisplay:
    """A progress display that presses Ctrl-C once the transfer has started."""

    def __call__(self, progress: Progress) -> None:
        if progress.phase == "transferring" and progress.bytes_done:
            raise KeyboardInterrupt

    def write(self, text: str) -> bool:
        return False

    def close(self) -> None:
        pass


def test_interrupt_exits_130_deletes_the_cart_and_leaves_no_partial_file(
    stub: CartdStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "make_display", lambda stream, quiet=False: _InterruptingDisplay())
    out = tmp_path / "out"
    assert (
        main(["cloudevent", write_json(tmp_path / "e.json", event_of(stub)), "-d", str(out), "--cart-url", stub.url])
        == 130
    )
    err = capsys.readouterr().err
    assert err.strip() == "pacifica-downloader: interrupted; no partial file was left"
    assert stub.methods() == ["POST", "HEAD", "GET", "DELETE"]
    assert [path for path in out.rglob("*") if path.is_file() and not is_index_file(out, path)] == []


@pytest.mark.parametrize(
    "error, code",
    [
        (InvalidInputError("x"), 2),
        (CartError("x"), 3),
        (CartNotFoundError("x"), 3),
        (CartFailedError("x"), 3),
        (TransferError("x"), 3),
        (PolicyError("x"), 3),
        (DownloaderError("x"), 3),
        (requests.exceptions.InvalidURL("x"), 3),
        (IntegrityError("x"), 4),
        (ManifestError("x"), 4),
        (UnsafeArchiveError("x"), 4),
        (CartTimeoutError("x"), 5),
        (DestinationError("x"), 6),
        (KeyboardInterrupt(), 130),
        (RuntimeError("x"), 1),
    ],
)
def test_exit_code_for(error: BaseException, code: int) -> None:
    assert exit_code_for(error) == code
    assert code in EXIT_CODES


# -- the progress display, unit by unit --------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_make_display_only_on_a_terminal() -> None:
    assert make_display(io.StringIO()) is None
    assert make_display(FakeTerminal(), quiet=True) is None
    plain = make_display(FakeTerminal(), use_tqdm=False)
    assert plain is not None and isinstance(plain.display, LineDisplay)


def test_terminal_shape_of_an_unsized_pty() -> None:
    """A pty nobody sized reports 0x0, on which tqdm would draw nothing: assume 80x24 there."""
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=False) as stream:
            assert terminal_shape(stream) == {"ncols": 80, "nrows": 24}
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
            assert terminal_shape(stream) == {"ncols": None, "nrows": None}  # tqdm asks the terminal itself
        assert terminal_shape(io.StringIO()) == {"ncols": None, "nrows": None}
    finally:
        os.close(slave)
        os.close(master)


def test_format_size() -> None:
    sizes = (0, 999, 1000, 12_500_000, 40 * 10**6, 2 * 10**12)
    assert [format_size(n) for n in sizes] == ["0 B", "999 B", "1.0 kB", "12.5 MB", "40.0 MB", "2.0 TB"]


def test_line_display_at_most_one_line_a_second() -> None:
    terminal = FakeTerminal()
    display = LineDisplay(terminal)
    mb = 10**6
    reports = [
        Progress("validating", files_total=10, bytes_total=40 * mb, elapsed=0.0),
        Progress("staging", files_total=10, bytes_total=40 * mb, elapsed=0.1),
        Progress("staging", files_total=10, bytes_total=40 * mb, elapsed=0.6),  # too soon
        Progress("staging", files_total=10, bytes_total=40 * mb, elapsed=3.3),
        Progress("transferring", files_total=10, bytes_total=40 * mb, elapsed=3.4),  # new stage: at once
        Progress("transferring", 2, 10, 8 * mb, 40 * mb, elapsed=3.9),  # too soon
        Progress("verifying", 3, 10, int(12.5 * mb), 40 * mb, elapsed=4.5),
        Progress("done", 10, 10, 40 * mb, 40 * mb, elapsed=5.0),
    ]
    for report in reports:
        display(report)
    assert terminal.getvalue().splitlines() == [
        "staging... 0.0 s",
        "staging... 3.2 s",
        "0 B of 40.0 MB, 0/10 files",
        "12.5 MB of 40.0 MB, 3/10 files",
        "40.0 MB of 40.0 MB, 10/10 files",
    ]


def test_line_display_shows_the_spares_of_a_cart_that_seemed_lost() -> None:
    terminal = FakeTerminal()
    display = LineDisplay(terminal)
    display(Progress("staging", files_total=3, elapsed=0.0))
    display(Progress("staging", files_total=3, elapsed=61.0, spares=1))
    display(Progress("staging", files_total=3, elapsed=200.0, spares=2))
    lines = terminal.getvalue().splitlines()
    assert lines == [
        "staging... 0.0 s",
        "staging... 61.0 s (1 spare cart posted)",
        "staging... 200.0 s (2 spare carts posted)",
    ]


def test_line_display_without_sizes() -> None:
    terminal = FakeTerminal()
    display = LineDisplay(terminal)
    display(Progress("transferring", 1, 2, 2048, None, elapsed=1.0))
    assert terminal.getvalue() == "2.0 kB, 1/2 files\n"


def test_tqdm_display_spinner_then_bar() -> None:
    tqdm = pytest.importorskip("tqdm").tqdm
    terminal = FakeTerminal()
    display = TqdmDisplay(terminal, tqdm)
    display(Progress("staging", files_total=2, bytes_total=3000, elapsed=0.5))
    display(Progress("staging", files_total=2, bytes_total=3000, elapsed=1.7))
    display(Progress("transferring", 0, 2, 1000, 3000, elapsed=2.0))
    display(Progress("verifying", 1, 2, 1000, 3000, elapsed=2.1))
    display.write("a log line")
    display(Progress("transferring", 1, 2, 3000, 3000, elapsed=2.2))
    display(Progress("verifying", 2, 2, 3000, 3000, elapsed=2.3))
    display(Progress("done", 2, 2, 3000, 3000, elapsed=2.4))
    text = terminal.getvalue()
    assert "staging cart... 1.2 s" in text
    assert "downloading: 100%" in text and "3.00kB/3.00kB" in text
    assert "files 2/2" in text
    assert "a log line\n" in text


def test_tqdm_display_without_sizes() -> None:
    tqdm = pytest.importorskip("tqdm").tqdm
    terminal = FakeTerminal()
    display = TqdmDisplay(terminal, tqdm)
    display(Progress("transferring", 0, 2, 2000, None, elapsed=2.0))
    display(Progress("done", 2, 2, 5000, None, elapsed=2.4))
    assert "5.00kB [" in terminal.getvalue()


def test_safe_display_never_raises() -> None:
    class Broken(LineDisplay):
        def __call__(self, progress: Progress) -> None:
            raise ValueError("boom")

    safe = SafeDisplay(Broken(FakeTerminal()))
    safe(Progress("staging"))
    assert safe.display is None
    safe(Progress("staging"))
    assert safe.write("x") is False
    safe.close()


# -- real processes: a pseudo-terminal, pipes, -vv logs ---------------------------------------

PLAIN_LINES = "import sys; sys.modules['tqdm'] = None; from pacifica.downloader._cli import main; sys.exit(main())"


@pytest.mark.parametrize("mode", ["tqdm", "tqdm-unsized-terminal", "plain"])
def test_progress_on_a_terminal_and_not_in_pipes(stub: CartdStub, tmp_path: Path, mode: str) -> None:
    if mode.startswith("tqdm"):
        pytest.importorskip("tqdm")
        prefix = [sys.executable, "-m", "pacifica.downloader"]
    else:
        prefix = [sys.executable, "-c", PLAIN_LINES]
    event = write_json(tmp_path / "e.json", event_of(stub))
    args = ["cloudevent", event, "--cart-url", stub.url]
    env = subprocess_env()

    sized = mode != "tqdm-unsized-terminal"
    status, output = run_on_pty(prefix + args + ["-d", str(tmp_path / "tty")], env, sized=sized)
    assert status == 0, output
    if mode.startswith("tqdm"):
        assert "staging cart..." in output
        assert "downloading: 100%" in output
        assert "files 2/2" in output
        assert "\r" in output
    else:
        assert "staging... 0.0 s" in output
        assert "307.2 kB of 307.2 kB, 2/2 files" in output
    assert "pacifica-downloader: 2 files (307.2 kB) in " in output

    piped = subprocess.run(
        prefix + args + ["-d", str(tmp_path / "pipe")],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == ""
    assert piped.stderr.startswith("pacifica-downloader: 2 files (307.2 kB) in ")
    assert len(piped.stderr.splitlines()) == 1
    assert "staging" not in piped.stderr and "\r" not in piped.stderr and "files 2/2" not in piped.stderr

    quiet_status, quiet_output = run_on_pty(prefix + args + ["-d", str(tmp_path / "quiet"), "--quiet"], env)
    assert quiet_status == 0
    assert quiet_output == ""


def test_ctrl_c_while_staging_exits_130_and_deletes_the_cart(stub: CartdStub, tmp_path: Path) -> None:
    """A real SIGINT to a real process: the library's cleanup runs, then one line and status 130."""
    stub.status = "staging"
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pacifica.downloader",
            "cloudevent",
            write_json(tmp_path / "e.json", event_of(stub)),
            "-d",
            str(out),
            "--cart-url",
            stub.url,
        ],
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As at a terminal: a test run started in the background (``cmd &``) ignores SIGINT, and so would the child.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert stub.polled.wait(60), "the command never polled the cart"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert stderr == "pacifica-downloader: interrupted; no partial file was left\n"
    assert stdout == ""
    methods = stub.methods()
    assert methods[0] == "POST" and "DELETE" in methods
    # After the DELETE only the checks that the cart stayed deleted (Cartd can resurrect a staging cart).
    assert set(methods[methods.index("DELETE") + 1 :]) <= {"HEAD", "DELETE"}
    assert stub.carts == {}
    assert [path for path in out.rglob("*") if path.is_file() and not is_index_file(out, path)] == []


@pytest.mark.parametrize("credentials", ["basic", "token"])
def test_credentials_never_in_debug_output(stub: CartdStub, tmp_path: Path, credentials: str) -> None:
    if credentials == "basic":
        extra = {"PACIFICA_DOWNLOADER_USER": "ann", "PACIFICA_DOWNLOADER_PASSWORD": SECRET_PASSWORD}
        header = "Basic " + base64.b64encode(f"ann:{SECRET_PASSWORD}".encode()).decode()
        secrets = [SECRET_PASSWORD, header.split()[1]]
    else:
        extra = {"PACIFICA_DOWNLOADER_TOKEN": SECRET_TOKEN}
        header = "Bearer " + SECRET_TOKEN
        secrets = [SECRET_TOKEN]
    stub.transactions["5"] = {"files": {str(obj["_id"]): obj for obj in event_of(stub)["data"][1:]}}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pacifica.downloader",
            "transactioninfo",
            "--transaction-id",
            "5",
            "--policy-url",
            stub.url,
            "--cart-url",
            stub.url,
            "-d",
            str(tmp_path),
            "-vv",
            "--json",
        ],
        env=subprocess_env(**extra),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "pacifica-downloader: " in result.stderr and " debug " in result.stderr  # -vv logs something
    assert "cart " in result.stderr and "created with 2 files" in result.stderr
    for secret in secrets:
        assert secret not in result.stderr
        assert secret not in result.stdout
    assert [headers.get("Authorization") for _, _, headers in stub.requests] == [header] * 5
