"""No credential leaves its request, however a server echoes it (issue 23).

The stub Cartd echoes every request header (a Basic credential decoded too), after terminal escape sequences,
in every reason phrase, every ``X-Pacifica-Message`` and every error body, as an authenticating proxy answering
"invalid credentials: <header>" would.  For each way a credential can be given (URL userinfo, a ``(user,
password)`` tuple, a requests auth object, the ``auth`` dict's ``headers`` with a Bearer token and a cookie, an
auth callable adding a header of its own, the command line's environment variables) and each way a download
can go (success, refusals of each request, a failed cart, server errors retried, a server gone after the POST,
a cart never ready), with the default settings, every log record (urllib3's included, at DEBUG), every
exception along its cause and context chain (text, repr, arguments, pickle, the formatted traceback), every
progress report, the command's output and every file under the location are searched for the secret and its
base64 forms.  The download workers' task is run too, its states, result, error and traceback searched the
same way.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import os
import pickle
import stat
import time
import traceback
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import urllib3
from support.events import event_for
from support.stub_cartd import HOSTILE, STAGING, StubCartd
from support.tars import make_tar

from pacifica.downloader import (
    CartError,
    CartFailedError,
    CartNotFoundError,
    CartTimeoutError,
    DestinationError,
    Downloader,
    DownloaderError,
    IntegrityError,
    InvalidInputError,
    ManifestError,
    PolicyError,
    Progress,
    TransferError,
    UnsafeArchiveError,
)
from pacifica.downloader import _bodies as bodies
from pacifica.downloader import _cli as cli
from pacifica.downloader import _transport as transport_module
from pacifica.downloader._exceptions import CartLost
from pacifica.downloader._incoming import HIDDEN_DIR
from pacifica.downloader._ledger import LEDGER_DIR
from pacifica.downloader._redaction import MASK, Secrets, escape_controls

USER = "ann"
SECRET = "s3cret-Pw-4711"
FILES = {"a/one.txt": b"one\n", "two.txt": b"two\n" * 1000}
EVENT = event_for(FILES)

#: What must never be seen: the secret, and the base64 forms it is sent in.
LEAKS = [SECRET, base64.b64encode(SECRET.encode()).decode(), base64.b64encode(f"{USER}:{SECRET}".encode()).decode()]
#: The hostile sequences the stub sends, as they look once escaped.
ESCAPED = HOSTILE.encode("unicode_escape").decode("ascii")

LIBRARY_FORMS = ["url-userinfo", "tuple", "auth-object", "headers-dict", "auth-callable"]
CLI_FORMS = ["cli-basic", "cli-token"]
#: Scenario -> the stub's settings; "timeout" is the call's (a cart never ready).
SCENARIOS: dict[str, dict[str, Any]] = {
    "success": {},
    "post-refused": {"post_status": 403},
    "head-refused": {"head": [(401, {})]},
    "staging-failed": {"head": [(500, {"X-Pacifica-Status": "error"})]},
    "get-refused": {"get_status": 403},
    "server-errors": {"post_status": 503},
    "gone-after-post": {"gone_after_post": True},
    "never-ready": {"head": [STAGING]},
}
#: The scenarios whose error quotes what the server said (so the echo, scrubbed and escaped, is in it).
QUOTING = {"post-refused", "head-refused", "staging-failed", "get-refused", "server-errors"}


def leaks_in(text: str | bytes) -> list[str]:
    """The secret forms found in ``text``."""
    if isinstance(text, bytes):
        return [leak for leak in LEAKS if leak.encode() in text]
    return [leak for leak in LEAKS if leak in text]


def assert_clean(where: str, text: str | bytes) -> None:
    found = leaks_in(text)
    assert not found, f"{where} holds {found}: {text[:2000]!r}"


def chain(err: BaseException) -> list[BaseException]:
    """``err`` and every exception behind it, its cause and its context (shown or not)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [err]
    while todo:
        current = todo.pop()
        if current is None or any(current is known for known in seen):
            continue
        seen.append(current)
        todo += [current.__cause__, current.__context__]
    return seen


def assert_error_clean(err: BaseException) -> None:
    """Every form of ``err`` and of every exception behind it is free of the secret."""
    assert_clean("the formatted traceback", "".join(traceback.format_exception(type(err), err, err.__traceback__)))
    for link in chain(err):
        name = type(link).__name__
        for form, text in (("str", str(link)), ("repr", repr(link)), ("args", repr(link.args))):
            assert_clean(f"{form}() of {name}", text)
        try:
            pickled = pickle.dumps(link)
        except Exception:  # what cannot be pickled cannot carry anything away in a pickle
            assert not isinstance(link, DownloaderError), f"{name} must pickle"
            continue
        assert_clean(f"the pickle of {name}", pickled)
        if isinstance(link, DownloaderError):
            again = pickle.loads(pickled)
            assert (type(again), str(again), again.response) == (type(link), str(link), None)


def assert_files_clean(location: Path) -> None:
    for path in location.rglob("*"):
        if path.is_file():
            assert_clean(f"the file {path}", path.read_bytes())


def assert_logs_clean(caplog: pytest.LogCaptureFixture) -> None:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in caplog.records:
        line = formatter.format(record)
        assert_clean(f"the log record of {record.name}", line)
        assert "\x1b" not in line and "\x07" not in line, f"raw escape sequence in a log record: {line!r}"


class SkippedTime:
    """The transport's clock, whose sleeps pass at once: the backoff is skipped, not shortened (not what is tested
    here), and the patience the retries are bound by runs out as it would."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.skipped

    def sleep(self, seconds: float) -> None:
        self.skipped += seconds


@pytest.fixture
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries come at once; everything else is the default."""
    monkeypatch.setattr(transport_module, "time", SkippedTime())


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's included
    yield caplog


def sign_with_a_key(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """An auth callable sending its credential in a header of its own: only what it adds tells it is one."""
    request.headers["X-Api-Key"] = SECRET
    return request


def stub_for(scenario: str) -> StubCartd:
    return StubCartd(echo=True, body=lambda uid, filename: make_tar(filename, FILES), **SCENARIOS[scenario])


def check_sent(stub: StubCartd) -> None:
    """The server did see the credential (else nothing would be there to leak)."""
    sent = " ".join(value for request in stub.requests for value in request.headers.values())
    assert leaks_in(sent), "the credential was sent"


def check_outcome(scenario: str, error: BaseException | None, stub: StubCartd) -> None:
    """The scenario went as meant: the server saw the credential, and any error quotes the server safely."""
    check_sent(stub)
    if scenario == "success":
        assert error is None
        return
    assert isinstance(error, DownloaderError), repr(error)
    if scenario in QUOTING:
        text = str(error)
        assert "invalid credentials" in text and MASK in text, text
        assert ESCAPED in text and "\x1b" not in text, text


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("form", LIBRARY_FORMS)
def test_the_library_never_shows_a_credential(
    form: str, scenario: str, tmp_path: Path, no_waiting: None, debug_logs: pytest.LogCaptureFixture
) -> None:
    reports: list[Progress] = []
    location = tmp_path / "area"
    with stub_for(scenario) as stub:
        url, auth = stub.url, None
        if form == "url-userinfo":
            url = url.replace("http://", f"http://{USER}:{SECRET}@")
        elif form == "tuple":
            auth = (USER, SECRET)
        elif form == "auth-object":
            auth = requests.auth.HTTPBasicAuth(USER, SECRET)
        elif form == "headers-dict":
            auth = {"headers": {"Authorization": f"Bearer {SECRET}", "Cookie": f"session={SECRET}; lang=en"}}
        else:
            auth = sign_with_a_key
        down = Downloader(location, url, auth=auth, progress=reports.append)
        assert leaks_in(down.cart_api.cart_api_url) == []
        error: BaseException | None = None
        try:
            down.cloudevent(EVENT, timeout=1 if scenario == "never-ready" else None)
        except Exception as raised:
            error = raised
    check_outcome(scenario, error, stub)
    if error is not None:
        assert_error_clean(error)
    assert reports, "progress was reported"
    for report in reports:
        assert_clean("a progress report", repr(report))
    assert_logs_clean(debug_logs)
    assert_files_clean(location)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("form", CLI_FORMS)
def test_the_command_never_shows_a_credential(
    form: str,
    scenario: str,
    tmp_path: Path,
    no_waiting: None,
    debug_logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in (
        "PACIFICA_DOWNLOADER_USER",
        "PACIFICA_DOWNLOADER_PASSWORD",
        "PACIFICA_DOWNLOADER_TOKEN",
        "CARTD_CART_API_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    if form == "cli-basic":
        monkeypatch.setenv("PACIFICA_DOWNLOADER_USER", USER)
        monkeypatch.setenv("PACIFICA_DOWNLOADER_PASSWORD", SECRET)
    else:
        monkeypatch.setenv("PACIFICA_DOWNLOADER_TOKEN", SECRET)
    event = tmp_path / "event.json"
    event.write_text(json.dumps(EVENT))
    location = tmp_path / "area"
    with stub_for(scenario) as stub:
        argv = ["cloudevent", str(event), "-d", str(location), "--cart-url", stub.url, "-vv", "--json"]
        status = cli.main([*argv, "--timeout", "1"] if scenario == "never-ready" else argv)
    output = capsys.readouterr()
    check_sent(stub)
    assert (status == 0) == (scenario == "success"), output.err
    for where, text in (("stdout", output.out), ("stderr", output.err)):
        assert_clean(f"the command's {where}", text)
        assert "\x1b" not in text and "\x07" not in text, f"raw escape sequence on the command's {where}"
    if scenario in QUOTING:
        assert ESCAPED in output.err and MASK in output.err, output.err
    assert " debug " in output.err, "-vv logged the requests"
    assert_logs_clean(debug_logs)
    assert_files_clean(location)


@pytest.mark.parametrize("scenario", ["success", "post-refused", "server-errors", "staging-failed"])
def test_the_download_task_never_shows_a_credential(
    scenario: str,
    tmp_path: Path,
    no_waiting: None,
    debug_logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The workers' credentials come from their environment (CARTD_CART_API_URL with user:password@): none of
    them reaches the result backend (each value it is sent: PROGRESS, RETRY, SUCCESS or FAILURE with its
    traceback, with ``result_extended``), the result, the error or Celery's log."""
    pytest.importorskip("celery")
    from pacifica.downloader import tasks

    app = tasks.make_app(
        {
            "BROKER_URL": "memory://",
            "BACKEND_URL": "cache+memory://",
            "DOWNLOADER_RETRY_BACKOFF": "0",
            "DOWNLOADER_MAX_RETRIES": "1",
        }
    )
    app.conf.result_extended = True
    task = app.tasks[tasks.TASK_NAME]
    monkeypatch.setattr(task, "store_eager_result", True, raising=False)
    stored: list[Any] = []
    original_set = app.backend.set

    def recording_set(key: Any, value: Any) -> Any:
        stored.append(value)
        return original_set(key, value)

    monkeypatch.setattr(app.backend, "set", recording_set)
    location = tmp_path / "area"
    with stub_for(scenario) as stub:
        monkeypatch.setenv("CARTD_CART_API_URL", stub.url.replace("http://", f"http://{USER}:{SECRET}@"))
        result = task.apply(args=(EVENT, str(location)))
    app.close()
    check_sent(stub)
    assert result.successful() == (scenario == "success"), result.traceback
    assert {"PROGRESS", "SUCCESS" if scenario == "success" else "FAILURE"} <= {
        state
        for state in ("PROGRESS", "RETRY", "SUCCESS", "FAILURE")
        if any(state.encode() in (value if isinstance(value, bytes) else str(value).encode()) for value in stored)
    }
    for value in stored:
        assert_clean("a value sent to the result backend", value if isinstance(value, bytes) else str(value))
    assert_clean("the task's result", repr(result.result))
    assert_clean("the task's traceback", str(result.traceback))
    if isinstance(result.result, BaseException):
        assert_error_clean(result.result)
    assert_logs_clean(debug_logs)
    assert_files_clean(location)


# -- the pieces ------------------------------------------------------------------------------------------------


def test_files_and_folders_are_never_world_writable_whatever_the_umask(tmp_path: Path, no_waiting: None) -> None:
    """With a umask of 0: the data, its folders, the location and its new parents, the hidden folder, a ledger
    left by a cart that could not be deleted, the index: none is writable by others."""
    old = os.umask(0)
    try:
        with stub_for("success") as stub:
            Downloader(tmp_path / "new" / "area", stub.url).cloudevent(EVENT)
        with stub_for("gone-after-post") as stub, pytest.raises(DownloaderError):
            Downloader(tmp_path / "new" / "area", stub.url).cloudevent(event_for({"c.txt": b"c"}))
    finally:
        os.umask(old)
    made = [tmp_path / "new", *(tmp_path / "new").rglob("*")]
    assert any(path.parent.name == LEDGER_DIR for path in made), "a ledger was left"
    writable = [f"{path} {stat.S_IMODE(path.stat().st_mode):o}" for path in made if path.stat().st_mode & stat.S_IWOTH]
    assert writable == []


def test_a_ledger_of_an_earlier_version_is_taken_over_with_the_configurations_credentials(
    tmp_path: Path, no_waiting: None
) -> None:
    with stub_for("success") as stub:
        stub._carts.add("old-cart")
        base = stub.url.replace("http://", f"http://{USER}:{SECRET}@")
        ledger = tmp_path / HIDDEN_DIR / LEDGER_DIR / "run-gone-1-abc"
        ledger.parent.mkdir(parents=True)
        ledger.write_text(f"+ {base}/old-cart\n")
        Downloader(tmp_path, base).cloudevent(EVENT)
    (delete,) = [request for request in stub.requests_for("DELETE") if request.uid == "old-cart"]
    assert delete.headers["Authorization"] == "Basic " + LEAKS[2]
    assert_files_clean(tmp_path)


def test_a_task_refuses_credentials_in_its_arguments() -> None:
    pytest.importorskip("celery")
    from pacifica.downloader import tasks

    app = tasks.make_app({"BROKER_URL": "memory://", "BACKEND_URL": "cache+memory://"})
    with pytest.raises(InvalidInputError, match="CARTD_CART_API_URL") as raised:
        tasks.enqueue(EVENT, "/srv/x", celery_app=app, cart_api_url=f"http://{USER}:{SECRET}@cartd:8081")
    app.close()
    assert_clean("the refusal", str(raised.value))


@pytest.mark.parametrize(
    "kind",
    [
        DownloaderError,
        CartError,
        CartNotFoundError,
        CartFailedError,
        CartTimeoutError,
        TransferError,
        PolicyError,
        IntegrityError,
        ManifestError,
        UnsafeArchiveError,
        DestinationError,
        InvalidInputError,
        CartLost,
    ],
)
def test_every_error_pickles_without_its_response_or_credentials(kind: type[DownloaderError]) -> None:
    secrets = Secrets()
    secrets.add_auth((USER, SECRET))
    response = requests.Response()
    response.request = requests.Request("GET", "http://h/c", auth=(USER, SECRET)).prepare()
    text = f"refused: Authorization: Basic {LEAKS[2]}"
    if kind is InvalidInputError:
        error: DownloaderError = kind(text, [f"token {SECRET}"])
    elif kind is DestinationError:
        error = kind(text, path="/x", errno=28)
    elif kind is CartLost:
        error = kind(text, cart_url=f"http://{USER}:{SECRET}@h/c", waited=60.0)
    elif kind in (IntegrityError, ManifestError):
        error = kind(text, cart_url=f"http://{USER}:{SECRET}@h/c")
    elif kind is TransferError:
        error = kind(text, attempts=[f"HTTP 503 {SECRET}"], cart_url=f"http://{USER}:{SECRET}@h/c", response=response)
    else:
        error = kind(text, cart_url=f"http://{USER}:{SECRET}@h/c", response=response)
    assert error.cart_url in (None, "http://h/c")
    assert_error_clean(error)
    again = pickle.loads(pickle.dumps(error))
    assert vars(again) == dict(vars(error), response=None)
    if kind is DestinationError:
        assert again.errno == 28
    del secrets


def test_quoting_escapes_what_a_terminal_acts_on_and_keeps_the_rest() -> None:
    secrets = Secrets()
    secrets.add_header("Cookie", f"session={SECRET}; lang=en")
    hostile = f"\x1b]0;t\x07a\x9b31m\u202egnp.exe\udc80 {quote(SECRET, safe='')} {json.dumps(SECRET)}\n2nd\tline"
    quoted = secrets.quote(hostile)
    assert quoted == ('\\x1b]0;t\\x07a\\x9b31m\\u202egnp.exe\\udc80 *** "***" ... 2nd\\x09line')
    assert escape_controls("a\tb\nc\x00") == "a\tb\nc\\x00"
    assert secrets.scrub("lang=en") == "lang=en", "a short cookie value is not a secret worth mangling text for"


def test_a_body_cut_at_the_cap_loses_a_secret_cut_in_two() -> None:
    secrets = Secrets()
    secrets.add(SECRET)
    assert secrets.cut_tail(b"x" * 10 + SECRET[:7].encode()) == b"x" * 10
    assert secrets.cut_tail(b"nothing to cut") == b"nothing to cut"


@pytest.mark.parametrize("encoding", ["identity", "gzip", "deflate", "raw-deflate", "two-gzip-members", "br"])
def test_bodies_are_read_up_to_the_cap_after_decompression(encoding: str) -> None:
    text = b"line of an error page\n" * 10_000  # 220 kB
    packed = {
        "identity": text,
        "gzip": gzip.compress(text),
        "deflate": zlib.compress(text),
        "raw-deflate": zlib.compress(text)[2:-4],
        "two-gzip-members": gzip.compress(text[:1000]) + gzip.compress(text),
        "br": b"\x00" * 100,
    }[encoding]
    header = {"raw-deflate": "deflate", "two-gzip-members": "gzip"}.get(encoding, encoding)
    small, whole = bodies.read_body(fake_answer(packed, header), 1 << 16)
    if encoding == "br":
        assert (small, whole) == (b"", False)
        return
    assert len(small) == 1 << 16 and not whole and text.startswith(small[:1000])
    short = {"gzip": gzip.compress(b"short"), "deflate": zlib.compress(b"short")}.get(header, b"short")
    assert bodies.read_body(fake_answer(short, header)) == (b"short", True)


def fake_answer(body: bytes, encoding: str) -> requests.Response:
    response = requests.Response()
    response.status_code = 500
    response.headers["Content-Encoding"] = encoding
    response.raw = urllib3.HTTPResponse(
        body=io.BytesIO(body), preload_content=False, decode_content=False, headers={"Content-Encoding": encoding}
    )
    return response
