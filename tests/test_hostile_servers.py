"""Hostile servers stay harmless (issue 23): no answer takes the memory, no TLS failure is retried, no escape
sequence reaches a terminal.

* Memory: a client in a child process (download_child.py, default settings) is answered a 300 MiB error
  body, a gzip body that inflates to 300 MiB, or a 1 MiB header line, each made lazily by the stub; its
  peak RSS (``os.wait4``) is compared with that of a child answered a small error body.
* TLS: an HTTPS stub whose certificate is signed by a CA the client does not know (made here with trustme):
  one connection, one typed error naming the remedies, each of which then works.
* Terminal: the command on a pseudo-terminal, by default and with ``-vv``, against a stub that puts a window
  title, a screen clear and colours into its answers: none of them reaches the terminal raw.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.child import CHILD
from support.events import event_for
from support.processes import REPO_ROOT, run_measured, run_on_pty, subprocess_env
from support.stub_cartd import HOSTILE, StubCartd
from support.tars import make_tar

from pacifica.downloader import Downloader, TransferError
from pacifica.downloader import _cli as cli

MIB = 1024 * 1024
FILES = {"a/one.txt": b"one\n", "two.txt": b"two\n"}
EVENT = event_for(FILES)
#: The most a hostile answer may add to the client's peak memory; the whole body would add 300 MiB and more.
MEMORY_BOUND = 32 * MIB


def plain_body() -> Iterator[bytes]:
    """300 MiB of text, made a MiB at a time as it is sent."""
    line = b"<p>internal error, see the logs</p>\n"
    block = (line * (MIB // len(line) + 1))[:MIB]
    for _ in range(300):
        yield block


def gzip_bomb() -> Iterator[bytes]:
    """A gzip stream of 300 MiB of zeros (about 300 kB compressed), compressed as it is sent."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MIB)
    for _ in range(300):
        out = packer.compress(block)
        if out:
            yield out
    yield packer.flush()


#: What the POST is answered, per case: (status, headers, body).
ANSWERS: dict[str, tuple[int, dict[str, str], Any]] = {
    "small error body": (400, {"Content-Length": "5"}, lambda: [b"nope\n"]),
    "300 MiB error body": (400, {"Content-Length": str(300 * MIB), "Content-Type": "text/html"}, plain_body),
    "gzip body inflating to 300 MiB": (400, {"Content-Encoding": "gzip", "Content-Type": "text/html"}, gzip_bomb),
    "1 MiB header line": (201, {"X-Pacifica-Message": "x" * MIB}, None),
}


def measured_download(case: str, tmp_path: Path) -> tuple[dict[str, Any], int, list[str]]:
    """Run a download whose POST gets ``case``'s answer in a child; return its report, peak RSS and requests."""
    status, headers, body = ANSWERS[case]
    with StubCartd(post_status=status, post_headers=headers, post_body=body) as stub:
        job = {"location": str(tmp_path / "area"), "cart_url": stub.url, "event": EVENT, "deadline": 120}
        code, out, peak = run_measured(
            [sys.executable, str(CHILD)],
            json.dumps(job).encode(),
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
            cwd=str(tmp_path),
        )
        methods = stub.methods()
    assert code == 1, out
    return json.loads(out.decode().splitlines()[-1]), peak, methods


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> int:
    """The peak RSS of a child whose download is refused with a small body."""
    report, peak, _ = measured_download("small error body", tmp_path_factory.mktemp("baseline"))
    assert report["error"]["type"] == "CartError"
    return peak


@pytest.mark.parametrize(
    "case, error",
    [
        ("300 MiB error body", "CartError"),
        ("gzip body inflating to 300 MiB", "CartError"),
        ("1 MiB header line", "TransferError"),
    ],
)
def test_no_answer_takes_the_memory(case: str, error: str, baseline: int, tmp_path: Path) -> None:
    report, peak, methods = measured_download(case, tmp_path)
    print(f"{case}: peak RSS {peak / MIB:.1f} MiB, baseline {baseline / MIB:.1f} MiB")
    assert report["error"]["type"] == error, report
    assert peak - baseline < MEMORY_BOUND, f"{case}: {peak / MIB:.0f} MiB against {baseline / MIB:.0f} MiB"
    assert methods.count("POST") == 1, "an answer no retry can mend is not retried"
    if error == "TransferError":
        assert "not a Cartd answer" in report["error"]["message"]


# -- TLS -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_ca() -> Any:
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


@pytest.fixture
def https_stub(private_ca: Any) -> Iterator[StubCartd]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    private_ca.issue_cert("127.0.0.1").configure_cert(context)
    with StubCartd(tls=context, body=lambda uid, filename: make_tar(filename, FILES)) as stub:
        yield stub


@pytest.fixture
def ca_file(private_ca: Any, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    private_ca.cert_pem.write_to_path(str(path))
    return str(path)


def test_an_unknown_ca_fails_at_once_naming_the_remedies(
    https_stub: StubCartd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(TransferError) as raised:
        Downloader(tmp_path / "area", https_stub.url).cloudevent(EVENT)  # the default settings
    message = str(raised.value)
    assert https_stub.connections == 1, "one attempt, not retried as a network blip"
    assert https_stub.requests == []
    assert "certificate could not be verified" in message and "CERTIFICATE_VERIFY_FAILED" in message
    for remedy in ("auth={'verify': '/path/to/ca.pem'}", "REQUESTS_CA_BUNDLE", "--ca-bundle PATH"):
        assert remedy in message
    assert len(raised.value.attempts) == 1


@pytest.mark.parametrize("remedy", ["auth-verify", "REQUESTS_CA_BUNDLE", "--ca-bundle"])
def test_each_remedy_named_works(
    remedy: str,
    https_stub: StubCartd,
    ca_file: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "CARTD_CART_API_URL"):
        monkeypatch.delenv(name, raising=False)
    location = tmp_path / "area"
    if remedy == "--ca-bundle":
        event = tmp_path / "event.json"
        event.write_text(json.dumps(EVENT))
        argv = ["cloudevent", str(event), "-d", str(location), "--cart-url", https_stub.url]
        assert cli.main(argv) == 3
        assert "--ca-bundle PATH" in capsys.readouterr().err
        assert cli.main([*argv, "--ca-bundle", ca_file]) == 0, capsys.readouterr().err
    elif remedy == "REQUESTS_CA_BUNDLE":
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_file)
        Downloader(location, https_stub.url).cloudevent(EVENT)
    else:
        Downloader(location, https_stub.url, auth={"verify": ca_file}).cloudevent(EVENT)
    assert (location / "data" / "a" / "one.txt").read_bytes() == b"one\n"


# -- the terminal ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("verbose", [[], ["-vv"]])
@pytest.mark.parametrize(
    "answer",
    [
        {"post_status": 403},  # the body quoted in the error
        {"head": [(401, {})]},  # the reason phrase quoted in the error
        {"head": [(500, {"X-Pacifica-Status": "error"})]},  # X-Pacifica-Message: the error, -v's server message
    ],
)  # retried reasons in the warnings and the error: test_secrets.py's command tests, at once (no backoff)
def test_no_escape_sequence_from_a_server_reaches_the_terminal(
    answer: dict[str, Any], verbose: list[str], tmp_path: Path
) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps(EVENT))
    with StubCartd(echo=True, body=lambda uid, filename: make_tar(filename, FILES), **answer) as stub:
        argv = [
            sys.executable,
            "-m",
            "pacifica.downloader",
            "cloudevent",
            str(event),
            "-d",
            str(tmp_path / "area"),
            "--cart-url",
            stub.url,
            *verbose,
        ]
        status, output = run_on_pty(argv, subprocess_env(PACIFICA_DOWNLOADER_TOKEN="t0ken-on-the-wire"), limit=120)
    assert status == 3, output
    for sequence in ("\x1b]0;owned\x07", "\x07", "\x1b[2J", "\x1b[31m"):
        assert sequence not in output, f"{sequence!r} reached the terminal: {output!r}"
    assert HOSTILE.encode("unicode_escape").decode("ascii") in output, "the server's text is shown, escaped"
    assert "t0ken-on-the-wire" not in output
