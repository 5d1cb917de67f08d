"""Fault injection: the real Cartd stack behind our :class:`FaultProxy`, one test per way the network fails.

Each test ends either in success with every file verified byte for byte, or
in the documented typed error within the configured bound (small
``Timeouts`` and ``Retry`` values keep every test short).  Plain carts are
streamed chunked without ranges, so a broken stream is restarted and the
files already verified are skipped; bundled carts (``{"bundle": True}``)
are served with ``Accept-Ranges`` and ``Content-Length``, so a broken
stream is resumed with a ``Range`` request answered ``206``.

No test sleeps to synchronise and none asserts on timing: what happened is
read from the proxy's request log, the library's log records, progress
reports and a recording ``time.sleep``.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
from support.events import make_event
from support.fault_proxy import Fault, FaultProxy
from support.helpers import Clock, FakeBody, FakeResponse, assert_tree, incoming_leftovers
from support.sessions import RecordingSession
from support.stub_cartd import StubCartd

from pacifica.downloader import (
    CartAPI,
    CartError,
    CartNotFoundError,
    CartTimeoutError,
    Downloader,
    Progress,
    Retry,
    RetryBudget,
    Timeouts,
    TransferError,
)
from pacifica.downloader import _stream as stream_module
from pacifica.downloader import _transport as transport_module
from pacifica.downloader._incoming import HIDDEN_DIR
from pacifica.downloader._ledger import LEDGER_DIR
from pacifica.downloader._stream import CartStream

#: Small limits so a failing scenario gives up in seconds: a silent socket
#: after 2 s, a stream without 1 KiB of progress after 1 s (see small_progress_bytes).
TIMEOUTS = Timeouts(connect=5.0, read=2.0, wait=30.0, stall=1.0)
#: The new stream bytes that count as progress in these tests (the library's is 64 KiB, PROGRESS_BYTES).
STALL_BYTES = 1024
#: Three tries per request and per stream, with short backoff.
RETRY = Retry(attempts=3, backoff=0.05, backoff_max=2.0)
#: Four files of 50 kB: the tar is about 200 kB, so a break after 120 kB
#: comes once two files are verified and the third is half received.
FILE_SIZE = 50_000
BREAK_AFTER = 120_000
CREDENTIAL = "s3cret"
CREDENTIAL_B64 = base64.b64encode(b"user:" + CREDENTIAL.encode()).decode()

KINDS = ["plain", "bundle"]


# -- helpers --------------------------------------------------------------------


@pytest.fixture(autouse=True)
def small_progress_bytes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Count 1 KiB of new stream bytes as progress, so the small carts here can stall; a test marked
    ``defaults`` runs with the library's own 64 KiB."""
    if request.node.get_closest_marker("defaults") is None:
        monkeypatch.setattr(stream_module, "PROGRESS_BYTES", STALL_BYTES)


def sample_files(count: int = 4, size: int = FILE_SIZE) -> dict[str, bytes]:
    return {f"f/{index}.bin": os.urandom(size) for index in range(count)}


@pytest.fixture
def proxied(cartd_stack: Any) -> Iterator[Any]:
    """``proxied(faults)`` starts a FaultProxy in front of the plain Cartd; all are closed after the test."""
    proxies: list[FaultProxy] = []

    def start(faults: Sequence[Fault] = (), max_hold: float = 15.0) -> FaultProxy:
        proxy = FaultProxy.for_url(cartd_stack.cart_url, faults, timeout=10.0, max_hold=max_hold).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()
        assert proxy.errors == [], f"the proxy itself went wrong: {proxy.errors}"


class Phases:
    """A progress callback that keeps every phase reported."""

    def __init__(self) -> None:
        self.reports: list[Progress] = []

    def __call__(self, report: Progress) -> None:
        self.reports.append(report)

    def count(self, phase: str) -> int:
        return sum(1 for report in self.reports if report.phase == phase)


def downloader(
    url: str,
    tmp_path: Path,
    kind: str = "plain",
    *,
    timeouts: Timeouts = TIMEOUTS,
    retry: Retry = RETRY,
    **options: Any,
) -> Downloader:
    extra = {"bundle": True} if kind == "bundle" else None
    return Downloader(tmp_path, url, extra_args=extra, timeouts=timeouts, retry=retry, **options)


def library_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The WARNING (and above) messages of the library's own module loggers."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("pacifica.downloader") and record.levelno >= logging.WARNING
    ]


def cart_uid(proxy: FaultProxy) -> str:
    paths = {request.path for request in proxy.requests_for("POST")}
    assert len(paths) == 1, f"one cart uid for the whole call, got {paths}"
    return str(paths.pop().rsplit("/", 1)[-1])


def assert_cart_deleted(cartd_stack: Any, proxy: FaultProxy) -> None:
    uid = cart_uid(proxy)
    assert "DELETE" in proxy.methods()
    assert requests.head(f"{cartd_stack.cart_url}/{uid}", timeout=10).status_code == 404


def assert_no_staging(tmp_path: Path) -> None:
    assert incoming_leftovers(tmp_path) == [], "no incoming folder or partial file is left behind"


class SleepRecorder:
    """Stands in for the ``time`` module inside ``transport``: ``sleep`` records its delay and returns."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def __init__(self) -> None:
        self.delays: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)


def _expect_success(
    cartd_stack: Any, proxy: FaultProxy, tmp_path: Path, files: dict[str, bytes], kind: str, **options: Any
) -> Phases:
    phases = Phases()
    written = downloader(proxy.url, tmp_path, kind, progress=phases, **options).cloudevent(
        make_event(cartd_stack, files)
    )
    assert sorted(written) == sorted(str(tmp_path / "data" / path) for path in files)
    assert_tree(tmp_path / "data", files)
    assert_no_staging(tmp_path)
    assert_cart_deleted(cartd_stack, proxy)
    assert phases.count("verifying") == len(files), "each file verified and placed exactly once"
    return phases


# -- a stream that breaks mid-way ----------------------------------------------------


@pytest.mark.parametrize("action", ["reset", "truncate"])
@pytest.mark.parametrize("kind", KINDS)
def test_stream_broken_mid_way_recovers(
    cartd_stack: Any, proxied: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, action: str
) -> None:
    """The first tar stream is cut (RST or FIN) after 120 kB: a plain cart is restarted with the
    files already verified skipped; a bundled cart is resumed with a Range request answered 206."""
    caplog.set_level(logging.INFO)
    files = sample_files()
    proxy = proxied([Fault("GET", action, after=BREAK_AFTER)])
    _expect_success(cartd_stack, proxy, tmp_path, files, kind)
    gets = proxy.requests_for("GET")
    assert len(gets) == 2, [(g.fault, g.status, g.header("Range")) for g in gets]
    assert gets[0].fault == action and gets[0].body_bytes == BREAK_AFTER
    warnings = library_warnings(caplog)
    if kind == "bundle":
        first_range = gets[1].header("Range")
        assert first_range is not None and re.fullmatch(r"bytes=\d+-", first_range), first_range
        offset = int(first_range[6:-1])
        assert 0 < offset <= BREAK_AFTER
        assert gets[1].status == 206
        assert any("resuming" in message for message in warnings), warnings
        assert not any("starting over" in message for message in warnings), warnings
    else:
        assert gets[1].header("Range") is None, "a stream without ranges is restarted from its start"
        assert gets[0].status == gets[1].status == 200
        restarts = [message for message in warnings if "starting over" in message]
        assert len(restarts) == 1, warnings
        verified = int(re.search(r"with (\d+) of 4 files verified", restarts[0]).group(1))  # type: ignore[union-attr]
        assert verified >= 1, f"the break came after whole files had been verified: {restarts}"


@pytest.mark.parametrize("kind", KINDS)
def test_stream_broken_on_every_try_gives_up_with_every_reason(
    cartd_stack: Any, proxied: Any, tmp_path: Path, kind: str
) -> None:
    """Every GET is reset before it brings any progress: a TransferError listing one reason per request sent.

    A plain cart starts over from byte 0 (20 kB, then a reset: the same bytes again, never progress); a
    bundled one resumes with ``Range``, so it is cut sooner than ``stall_bytes`` of new data each time.
    """
    files = sample_files()
    proxy = proxied([Fault("GET", "reset", after=20_000 if kind == "plain" else 500, count=None)])
    with pytest.raises(TransferError) as raised:
        downloader(proxy.url, tmp_path, kind).cloudevent(make_event(cartd_stack, files))
    error = raised.value
    gets = proxy.count("GET")
    assert gets == RETRY.attempts, "one budget for requests, resumes and restarts: one GET per try, none past it"
    assert len(error.attempts) == gets, f"one reason per request that failed: {error.attempts}"
    assert all(re.search(r"reset|broken|ended", reason, re.IGNORECASE) for reason in error.attempts), error.attempts
    assert f"({len(error.attempts)} attempts)" in str(error)
    assert_cart_deleted(cartd_stack, proxy)
    assert_no_staging(tmp_path)
    on_disk = (
        {str(p.relative_to(tmp_path / "data")): p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()}
        if (tmp_path / "data").exists()
        else {}
    )
    assert all(files[path] == content for path, content in on_disk.items()), "only verified files are kept"


def test_resumed_stream_that_keeps_bringing_new_bytes_finishes(
    cartd_stack: Any, proxied: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bundled cart's GET reset after every 20 kB, resumed each time from the first byte not yet received:
    each resume brings new bytes, which give the tries back, so the 200 kB cart arrives whole, every file
    verified, although more GETs failed than ``attempts``."""
    files = sample_files()
    proxy = proxied([Fault("GET", "reset", after=20_000, count=None)])
    with caplog.at_level(logging.WARNING, logger="pacifica.downloader"):
        _expect_success(cartd_stack, proxy, tmp_path, files, "bundle")
    gets = proxy.requests_for("GET")
    assert len(gets) > RETRY.attempts, "the budget is given back by progress, not spent once per download"
    assert all(get.header("Range") for get in gets[1:]), "every GET after the first resumes"
    assert len(gets) <= 4 * FILE_SIZE // 20_000 + 2, "one GET per 20 kB piece of the tar, no more"


def test_resume_offset_counts_bytes_already_returned_by_the_same_read() -> None:
    """The same fault without a server: one ``read(20000)`` gathers 5000 bytes, then the connection breaks.
    The Range request must start at byte 5000, and the bytes handed out must be the stream's, in order."""
    data = bytes(range(256)) * 100
    offsets: list[int] = []

    def reopen(offset: int) -> Any:
        offsets.append(offset)
        content_range = f"bytes {offset}-{len(data) - 1}/{len(data)}"
        return FakeResponse(FakeBody(data[offset:], chunk=1000), 206, {"Content-Range": content_range})

    first = FakeResponse(
        FakeBody(data, chunk=1000, fail_at=5000), 200, {"Accept-Ranges": "bytes", "Content-Length": str(len(data))}
    )
    stream = CartStream(first, reopen, timeouts=TIMEOUTS, budget=RetryBudget(RETRY))
    got = stream.read(20000) + stream.read(10000)
    assert offsets == [5000], f"resumed at {offsets}, but 5000 bytes had been received"
    assert got == data


# -- a stream that stalls -------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_trickled_stream_fails_over_within_stall_timeout(
    cartd_stack: Any, proxied: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """The first GET trickles 1 byte per 0.3 s: after the stall timeout it is abandoned and the next try succeeds."""
    caplog.set_level(logging.INFO)
    files = sample_files()
    proxy = proxied([Fault("GET", "trickle", interval=0.3)])
    _expect_success(cartd_stack, proxy, tmp_path, files, kind)
    gets = proxy.requests_for("GET")
    assert len(gets) == 2 and gets[0].fault == "trickle"
    assert gets[0].body_bytes < STALL_BYTES, "given up before a stall window's worth arrived"
    assert any("stalled" in message for message in library_warnings(caplog)), library_warnings(caplog)


def test_trickled_stream_on_every_try_gives_up(cartd_stack: Any, proxied: Any, tmp_path: Path) -> None:
    """Every GET trickles: a TransferError after the bounded number of tries, each failure a stall."""
    proxy = proxied([Fault("GET", "trickle", interval=0.3, count=None)])
    with pytest.raises(TransferError) as raised:
        downloader(proxy.url, tmp_path).cloudevent(make_event(cartd_stack, sample_files(2)))
    assert proxy.count("GET") == RETRY.attempts
    assert len(raised.value.attempts) == RETRY.attempts
    assert all("stalled" in reason for reason in raised.value.attempts), raised.value.attempts
    assert_cart_deleted(cartd_stack, proxy)
    assert_no_staging(tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_headers_then_silence_recovers(
    cartd_stack: Any, proxied: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """The first GET's headers arrive, then nothing: after the read timeout the stream is restarted
    (plain) or resumed with a Range request (bundle)."""
    caplog.set_level(logging.INFO)
    files = sample_files()
    proxy = proxied([Fault("GET", "silent")])
    _expect_success(cartd_stack, proxy, tmp_path, files, kind)
    gets = proxy.requests_for("GET")
    assert gets[0].fault == "silent" and gets[0].body_bytes == 0
    assert library_warnings(caplog), "the recovery is logged"
    # Nothing was received: one more GET from byte 0 (a plain GET, or a Range from 0 answered 206)
    # is all it takes, whether the library calls it a resume or a restart.
    assert len(gets) == 2, "GETs sent: {}; warnings: {}".format(
        [(get.header("Range"), get.status) for get in gets], library_warnings(caplog)
    )
    assert gets[1].status in (200, 206)


def test_silence_on_every_try_gives_up(cartd_stack: Any, proxied: Any, tmp_path: Path) -> None:
    proxy = proxied([Fault("GET", "silent", count=None)])
    with pytest.raises(TransferError) as raised:
        downloader(proxy.url, tmp_path).cloudevent(make_event(cartd_stack, sample_files(2)))
    assert proxy.count("GET") == RETRY.attempts
    assert len(raised.value.attempts) == RETRY.attempts
    assert all(re.search(r"timed? ?out", reason, re.IGNORECASE) for reason in raised.value.attempts), (
        raised.value.attempts
    )
    assert_cart_deleted(cartd_stack, proxy)


# -- one retry budget per download ----------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_mute_server_ends_in_one_error_within_the_documented_bound(
    cartd_stack: Any, proxied: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """A server that accepts connections and never answers: one TransferError after ``attempts`` requests.

    The documented bound (retry.py): at most ``attempts`` failed tries since the last progress, each
    waiting at most ``Timeouts.read``, plus the backoff delays between them.  The delays slept are
    recorded, so the bound is checked without timing the test.
    """
    sleeps = SleepRecorder()
    monkeypatch.setattr(transport_module, "time", sleeps)
    proxy = proxied([Fault(method, "mute", count=None)])
    fast = TIMEOUTS.replace(read=0.5)
    with pytest.raises(TransferError) as raised:
        downloader(proxy.url, tmp_path, timeouts=fast).cloudevent(make_event(cartd_stack, sample_files(2)))
    assert proxy.count(method) == RETRY.attempts, "no request past the budget"
    assert len(raised.value.attempts) == RETRY.attempts, raised.value.attempts
    assert all(re.search(r"timed? ?out", reason, re.IGNORECASE) for reason in raised.value.attempts)
    assert len(sleeps.delays) == RETRY.attempts - 1
    assert RETRY.attempts * fast.read + sum(sleeps.delays) <= RETRY.attempts * (fast.read + RETRY.backoff_max)


def test_budget_is_spent_once_across_layers() -> None:
    """Request retries, resumes and restarts spend one budget: the third failure of any kind ends it."""
    budget = RetryBudget(Retry(attempts=3, jitter=0))
    assert budget.spend("HTTP 503") is not None  # a request retried
    budget.reached("cart", 10)  # new bytes: progress gives the tries back
    assert budget.spent == 0
    assert budget.spend("reset at byte 10") is not None  # a resume
    budget.reached("cart", 10)  # the same bytes again: no progress
    assert budget.spend("reset at byte 10") is not None  # a restart
    assert budget.spend("HTTP 503") is None
    assert budget.history == ["HTTP 503", "reset at byte 10", "reset at byte 10", "HTTP 503"]


# -- patience: counted from the server's last progress, not per try --------------------------

#: Longer than any fault below may last, so that only the client's own bound can end it early.
HOLD = 150.0


@pytest.mark.defaults
def test_with_defaults_a_server_that_stops_making_progress_is_reported_within_the_window(
    cartd_stack: Any, proxied: Any, tmp_path: Path
) -> None:
    """Every default: silence after the tar's headers, a tar answer trickled from its first header byte, a
    server that never answers at all, each ends in TransferError naming the 60 s window, cut off by the client
    (the proxy would have gone on for 150 s); a server that answers every request 30 s late still succeeds.

    The four run at once (each holds a connection for a minute, so one after the other would take four).
    """
    window = Timeouts().progress
    scenarios = {
        "silent after headers": [Fault("GET", "silent", count=None)],
        "trickled headers": [Fault("GET", "trickle_head", interval=0.3, count=None)],
        "never answers": [Fault(method, "mute", count=None) for method in ("POST", "HEAD", "GET", "DELETE")],
        "answers 30 s late": [
            Fault(method, "late", interval=30.0, count=None) for method in ("POST", "HEAD", "GET", "DELETE")
        ],
    }
    files = sample_files(2)
    outcomes: dict[str, BaseException | None] = {}
    proxies = {name: proxied(faults, max_hold=HOLD) for name, faults in scenarios.items()}

    def run(name: str) -> None:
        try:
            Downloader(tmp_path / name, proxies[name].url).cloudevent(make_event(cartd_stack, files))
            outcomes[name] = None
        except BaseException as err:  # noqa: BLE001 - kept for the assertions below
            outcomes[name] = err

    threads = [threading.Thread(target=run, args=(name,), daemon=True) for name in scenarios]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HOLD + 60)
    assert not any(thread.is_alive() for thread in threads), "a download outlived every bound"
    for name in ("silent after headers", "trickled headers", "never answers"):
        error = outcomes[name]
        assert isinstance(error, TransferError), f"{name}: {error!r}"
        assert f"no sign of progress from the server for {window:g} s" in str(error), f"{name}: {error}"
        assert error.attempts, f"{name}: every attempt is listed"
        held = [request for request in proxies[name].requests if request.fault is not None]
        assert held and held[-1].finished.wait(30), f"{name}: the proxy still holds the last try"
        assert held[-1].client_gave_up, f"{name}: the proxy, not the client, ended the last try"
    assert outcomes["answers 30 s late"] is None, outcomes["answers 30 s late"]
    assert_tree(tmp_path / "answers 30 s late" / "data", files)


def test_patience_is_spent_across_tries_and_given_back_by_progress() -> None:
    """A fake clock: the budget ends a download once the next try would start past the window."""
    clock = Clock()
    budget = RetryBudget(Retry(attempts=10, backoff=1.0, jitter=0), patience=60.0, clock=clock.monotonic)
    assert budget.quiet_deadline == 60.0
    clock.now = 50.0
    assert budget.spend("timed out") == 1.0
    budget.progressed()  # an answer: the window starts again
    assert budget.quiet_deadline == 110.0
    clock.now = 100.0
    budget.reached("cart", 10, step=64)  # a few bytes: no progress
    assert budget.quiet_deadline == 110.0
    budget.reached("cart", 100, step=64)
    assert budget.quiet_deadline == 160.0
    clock.now = 159.5
    assert budget.spend("reset") is None, "the next try, 1 s after 159.5, would start past the window (160)"
    assert "no sign of progress from the server for 60 s" in budget.why_spent()
    assert budget.history == ["timed out", "reset"]
    once = RetryBudget(Retry(attempts=1), patience=60.0, clock=clock.monotonic)
    assert once.spend("refused") is None
    assert once.why_spent() == "1 tries failed in a row", "the budget, not the window, ended it"


class Refused(requests.Session):
    """A requests session on the fake clock whose server refuses connections until ``back`` (None: for ever)."""

    def __init__(self, clock: Clock, back: float | None) -> None:
        super().__init__()
        self.clock, self.back = clock, back
        self.tries: list[float] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        self.tries.append(self.clock.now)
        if self.back is None or self.clock.now < self.back:
            raise requests.exceptions.ConnectionError("[Errno 111] Connection refused")
        answer = requests.Response()
        answer.status_code, answer.raw = 201, io.BytesIO(b"")
        return answer


class Unwatched:
    """Stands in for the watchdog's Watch on the fake clock (no socket to cut)."""

    fired = False

    def __init__(self, deadline: float | None) -> None:
        pass

    def __enter__(self) -> Unwatched:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def refusing_transport(monkeypatch: pytest.MonkeyPatch, back: float | None) -> tuple[Any, Refused, Clock]:
    """A Transport with every default whose server refuses connections until ``back``, on a fake clock."""
    clock = Clock()
    monkeypatch.setattr(transport_module, "time", clock)
    monkeypatch.setattr(transport_module, "Watch", Unwatched)
    server = Refused(clock, back)
    transport = transport_module.Transport(session=server)
    return transport, server, clock


@pytest.mark.defaults
@pytest.mark.parametrize("outage", [4.0, 10.0, 30.0])
def test_with_defaults_a_restart_is_ridden_out_not_counted_out(monkeypatch: pytest.MonkeyPatch, outage: float) -> None:
    """Refused connections fail at once: a budget counted in tries was spent within a 4 s restart.  With the
    defaults, tries go on with backoff for as long as the patience (60 s) lasts, so a restart of up to 30 s is
    survived, and noticed within one backoff (Retry.backoff_max, 10 s) of the server's return."""
    for _ in range(50):  # the jitter is random: many draws
        transport, server, clock = refusing_transport(monkeypatch, outage)
        budget = RetryBudget(transport.retry, Timeouts().progress, clock=clock.monotonic)
        response = transport.request("POST", "http://cartd.invalid/1", budget=budget)
        assert response.status_code == 201
        assert outage <= server.tries[-1] <= outage + Retry().backoff_max, server.tries
        assert len(budget.history) == len(server.tries) - 1


@pytest.mark.defaults
def test_with_defaults_a_server_gone_for_good_ends_within_the_patience_every_try_listed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for _ in range(50):
        transport, server, clock = refusing_transport(monkeypatch, None)
        budget = RetryBudget(transport.retry, Timeouts().progress, clock=clock.monotonic)
        with pytest.raises(TransferError) as raised:
            transport.request("HEAD", "http://cartd.invalid/1", budget=budget)
        assert server.tries[-1] < Timeouts().progress, "no try starts past the patience"
        assert clock.now <= Timeouts().progress + Retry().backoff_max, "the error within 60 s + one backoff"
        assert len(raised.value.attempts) == len(server.tries) > 5, "every try is listed"
        assert all("Connection refused" in reason for reason in raised.value.attempts)
        assert "no sign of progress from the server for 60 s" in str(raised.value)


class TimedBody(FakeBody):
    """A body that arrives at ``rate`` bytes per second of the fake clock, one chunk per read."""

    def __init__(self, size: int, clock: Clock, rate: float, chunk: int = 1 << 20) -> None:
        super().__init__(b"", chunk)
        self.size, self.clock, self.rate = size, clock, rate
        self.piece = bytes(chunk)

    def read1(self, size: int) -> bytes:
        take = min(size, self.chunk, self.size - self.pos)
        self.clock.now += take / self.rate
        self.pos += take
        return self.piece[:take]


@pytest.mark.defaults
def test_a_steady_slow_stream_is_never_out_of_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 MiB/s for 300 s of the fake clock, five times the 60 s window with the default Timeouts: each
    64 KiB of new bytes is progress, so the stream is read to its end (a 10 GB cart is the same rule)."""
    clock = Clock()
    monkeypatch.setattr(stream_module, "time", clock)
    size = 300 * (1 << 20)
    budget = RetryBudget(Retry(), patience=Timeouts().progress, clock=clock.monotonic)
    body = TimedBody(size, clock, rate=float(1 << 20))
    stream = CartStream(FakeResponse(body), lambda offset: pytest.fail("resumed"), timeouts=Timeouts(), budget=budget)
    received = sum(len(piece) for piece in stream.pieces(size))
    assert received == size and clock.now == pytest.approx(300.0)
    assert budget.history == []


@pytest.mark.defaults
def test_a_trickling_stream_is_out_of_patience_within_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """10 bytes/s, always under 64 KiB: TransferError naming the window, at 60 s of the fake clock."""
    clock = Clock()
    monkeypatch.setattr(stream_module, "time", clock)
    budget = RetryBudget(Retry(), patience=Timeouts().progress, clock=clock.monotonic)
    body = TimedBody(10**6, clock, rate=10.0, chunk=1)
    stream = CartStream(
        FakeResponse(body),
        lambda offset: pytest.fail("resumed"),
        timeouts=Timeouts().replace(stall=1000.0),
        budget=budget,
    )
    with pytest.raises(TransferError, match="no sign of progress from the server for 60 s"):
        for _ in stream.pieces(10**6):
            pass
    assert clock.now == pytest.approx(Timeouts().progress, abs=0.2)


# -- the caller's deadline ---------------------------------------------------------------


def test_deadline_stops_a_trickled_download(cartd_stack: Any, proxied: Any, tmp_path: Path) -> None:
    """No stall timeout would fire (60 s), but the caller's 3 s deadline ends the call with CartTimeoutError."""
    proxy = proxied([Fault("GET", "trickle", interval=0.3, count=None)])
    patient = TIMEOUTS.replace(stall=60.0, read=5.0)
    with pytest.raises(CartTimeoutError):
        downloader(proxy.url, tmp_path, timeouts=patient).cloudevent(
            make_event(cartd_stack, sample_files(2)), deadline=3.0
        )
    assert proxy.count("GET") == 1, "the deadline is not retried"
    assert_cart_deleted(cartd_stack, proxy)
    assert_no_staging(tmp_path)


def test_deadline_bounds_a_silent_socket(cartd_stack: Any, proxied: Any, tmp_path: Path) -> None:
    """Headers then silence, with a read timeout (8 s) longer than the caller's deadline (2 s): no request
    may wait on its socket past the deadline, and the call ends in CartTimeoutError."""
    proxy = proxied([Fault("GET", "silent", count=None)])
    session = RecordingSession()
    patient = TIMEOUTS.replace(stall=60.0, read=8.0)
    deadline = 2.0
    with pytest.raises(CartTimeoutError):
        downloader(proxy.url, tmp_path, timeouts=patient, session=session).cloudevent(
            make_event(cartd_stack, sample_files(2)), deadline=deadline
        )
    gets = [timeout for method, timeout in session.timeouts if method == "GET"]
    assert gets, session.timeouts
    read_timeouts = [timeout[1] if isinstance(timeout, tuple) else timeout for timeout in gets]
    assert all(value is not None and value <= deadline for value in read_timeouts), (
        f"a GET waited on its socket up to {read_timeouts} s although the call's deadline was {deadline} s"
    )


# -- answers Cartd never gave: retried statuses, Retry-After ---------------------------------


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_is_honoured(
    cartd_stack: Any,
    proxied: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
) -> None:
    """The first two HEADs get ``503``/``429`` with ``Retry-After: 1`` from the proxy: the library waits exactly 1 s
    (recorded, not timed) before each retry, then succeeds."""
    caplog.set_level(logging.INFO)
    clock = SleepRecorder()
    monkeypatch.setattr(transport_module, "time", clock)
    proxy = proxied([Fault("HEAD", "respond", count=2, status=status, headers={"Retry-After": "1"})])
    _expect_success(cartd_stack, proxy, tmp_path, sample_files(2), "plain")
    heads = proxy.requests_for("HEAD")
    assert [head.fault for head in heads[:2]] == ["respond", "respond"]
    assert [head.status for head in heads[:2]] == [status, status]
    assert len(heads) >= 3
    assert clock.delays == [1.0, 1.0], f"Retry-After replaces the computed backoff: {clock.delays}"
    retries = [message for message in library_warnings(caplog) if f"HTTP {status}" in message]
    assert len(retries) == 2, library_warnings(caplog)


def test_retry_after_is_capped_by_backoff_max(
    cartd_stack: Any, proxied: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SleepRecorder()
    monkeypatch.setattr(transport_module, "time", clock)
    proxy = proxied([Fault("HEAD", "respond", count=1, status=503, headers={"Retry-After": "3600"})])
    _expect_success(cartd_stack, proxy, tmp_path, sample_files(1), "plain")
    assert clock.delays == [RETRY.backoff_max]


def test_head_503_on_every_try_gives_up(
    cartd_stack: Any, proxied: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SleepRecorder()
    monkeypatch.setattr(transport_module, "time", clock)
    proxy = proxied([Fault("HEAD", "respond", count=None, status=503, headers={"Retry-After": "1"})])
    with pytest.raises(TransferError) as raised:
        downloader(proxy.url, tmp_path).cloudevent(make_event(cartd_stack, sample_files(1)))
    methods = proxy.methods()
    assert methods[: methods.index("DELETE")].count("HEAD") == RETRY.attempts, "no HEAD past the budget"
    assert set(methods[methods.index("DELETE") :]) <= {"HEAD", "DELETE"}, "then only the checks it stayed deleted"
    assert raised.value.attempts == ["HTTP 503 Service Unavailable"] * RETRY.attempts
    assert f"({RETRY.attempts} attempts)" in str(raised.value)
    assert_cart_deleted(cartd_stack, proxy)


@pytest.mark.parametrize("status", [408, 502, 504])
def test_transient_head_statuses_are_retried(cartd_stack: Any, proxied: Any, tmp_path: Path, status: int) -> None:
    proxy = proxied([Fault("HEAD", "respond", count=1, status=status)])
    _expect_success(cartd_stack, proxy, tmp_path, sample_files(1), "plain")
    assert proxy.requests_for("HEAD")[0].status == status


@pytest.mark.parametrize("kind", KINDS)
def test_get_500_is_retried(
    cartd_stack: Any, proxied: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """The first GET gets a 500 from the proxy: the GET is sent again and the download succeeds."""
    caplog.set_level(logging.INFO)
    proxy = proxied([Fault("GET", "respond", status=500, body=b"boom")])
    _expect_success(cartd_stack, proxy, tmp_path, sample_files(), kind)
    gets = proxy.requests_for("GET")
    assert [get.status for get in gets] == [500, 200]
    assert any("HTTP 500" in message for message in library_warnings(caplog)), library_warnings(caplog)


def test_get_500_on_every_try_gives_up(cartd_stack: Any, proxied: Any, tmp_path: Path) -> None:
    proxy = proxied([Fault("GET", "respond", status=500, count=None)])
    with pytest.raises(TransferError) as raised:
        downloader(proxy.url, tmp_path).cloudevent(make_event(cartd_stack, sample_files(1)))
    assert proxy.count("GET") == RETRY.attempts
    assert raised.value.attempts == ["HTTP 500 Internal Server Error"] * RETRY.attempts
    assert_cart_deleted(cartd_stack, proxy)


# -- the POST whose answer is lost --------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_lost_post_answer_is_posted_again(
    cartd_stack: Any, proxied: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """Cartd creates the cart but the answer to the POST never arrives: the same uid is POSTed again,
    which replaces the cart, and the download succeeds; the cart is deleted at the end."""
    caplog.set_level(logging.INFO)
    proxy = proxied([Fault("POST", "drop_reply")])
    _expect_success(cartd_stack, proxy, tmp_path, sample_files(), kind)
    posts = proxy.requests_for("POST")
    assert len(posts) == 2
    assert posts[0].fault == "drop_reply" and posts[0].status == 201, "Cartd did create the first cart"
    assert posts[1].status == 201 and posts[0].target == posts[1].target and posts[0].body == posts[1].body
    assert any(message.startswith("POST") for message in library_warnings(caplog)), library_warnings(caplog)


def test_lost_post_answer_on_every_try_gives_up(cartd_stack: Any, proxied: Any, tmp_path: Path) -> None:
    proxy = proxied([Fault("POST", "drop_reply", count=None)])
    with pytest.raises(TransferError) as raised:
        downloader(proxy.url, tmp_path).cloudevent(make_event(cartd_stack, sample_files(1)))
    assert proxy.count("POST") == RETRY.attempts
    assert len(raised.value.attempts) == RETRY.attempts
    assert all("ConnectionError" in reason for reason in raised.value.attempts), raised.value.attempts
    # The carts were made under one uid, which this run could not know: its ledger keeps it for the next run.
    uid = cart_uid(proxy)
    ledgers = list((tmp_path / HIDDEN_DIR / LEDGER_DIR).glob("run-*"))
    assert len(ledgers) == 1 and uid in ledgers[0].read_text(), "the cart is left for the next run to delete"
    requests.delete(f"{cartd_stack.cart_url}/{uid}", timeout=10)  # the stack stays tidy


# -- errors that must not be retried ---------------------------------------------------------------


def test_unknown_cart_404_reported_at_once(cartd_stack: Any, proxied: Any) -> None:
    """HEAD on a cart Cartd never had: CartNotFoundError after exactly one HEAD."""
    proxy = proxied()
    api = CartAPI(proxy.url, timeouts=TIMEOUTS, retry=RETRY)
    with pytest.raises(CartNotFoundError):
        api.wait_for_cart(f"{proxy.url}/never-made-{os.getpid()}", timeout=20)
    assert proxy.methods() == ["HEAD"]
    assert proxy.requests_for("HEAD")[0].status == 404


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_cart_gone_404_reported_at_once(cartd_stack: Any, proxied: Any, tmp_path: Path, method: str) -> None:
    """The cart vanishes (404) while polling or when fetching: CartNotFoundError, no retry, cart deleted."""
    proxy = proxied([Fault(method, "respond", status=404, body=b'{"message": "Not Found"}')])
    with pytest.raises(CartNotFoundError):
        downloader(proxy.url, tmp_path).cloudevent(make_event(cartd_stack, sample_files(1)), timeout=20)
    assert proxy.count(method) == 1
    assert_cart_deleted(cartd_stack, proxy)
    assert_no_staging(tmp_path)


@pytest.mark.parametrize("status", [400, 401, 403])
@pytest.mark.parametrize("method", ["POST", "HEAD", "GET"])
def test_client_errors_from_stub_are_not_retried(tmp_path: Path, method: str, status: int) -> None:
    """A 4xx other than 408/429 is the caller's problem: one request, then a CartError (not a timeout)."""
    options: dict[str, Any] = {"body": b"", "post_status": 201, "get_status": 200}
    if method == "POST":
        options["post_status"] = status
    elif method == "HEAD":
        options["head"] = [(status, {})]
    else:
        options["get_status"] = status
    event = {
        "data": [
            {
                "destinationTable": "Files",
                "_id": 1,
                "name": "n.txt",
                "subdir": "s",
                "hashtype": "sha1",
                "hashsum": "0" * 40,
            }
        ]
    }
    with StubCartd(**options) as stub:
        with pytest.raises(CartError) as raised:
            downloader(stub.url, tmp_path).cloudevent(event, timeout=3)
        assert not isinstance(raised.value, CartTimeoutError), (
            f"a {status} on {method} must be reported at once, not polled until the timeout: {raised.value}"
        )
        assert stub.count(method) == 1, stub.methods()
        if method != "POST":
            assert stub.deleted()


# -- no credentials in logs or errors ---------------------------------------------------------


@pytest.mark.parametrize("where", ["auth-tuple", "in-url"])
def test_logs_and_errors_hold_no_credentials(
    cartd_stack: Any,
    proxied: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    """A lost POST answer, 503s, a broken stream and a final error, all with credentials: none of it shows them."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(transport_module, "time", SleepRecorder())
    proxy = proxied(
        [
            Fault("POST", "drop_reply"),
            Fault("HEAD", "respond", count=2, status=503, headers={"Retry-After": "1"}),
            Fault("GET", "reset", after=BREAK_AFTER),
        ]
    )
    options: dict[str, Any] = {}
    if where == "auth-tuple":
        url, options["auth"] = proxy.url, ("user", CREDENTIAL)
    else:
        url = proxy.url.replace("http://", f"http://user:{CREDENTIAL}@")
    files = sample_files()
    downloader(url, tmp_path, "plain", **options).cloudevent(make_event(cartd_stack, files))
    assert_tree(tmp_path / "data", files)
    # And a final error, with every attempt's reason in its message.
    failing = proxied([Fault("GET", "reset", count=None, after=20_000)])
    failing_url = failing.url if where == "auth-tuple" else failing.url.replace("http://", f"http://user:{CREDENTIAL}@")
    with pytest.raises(TransferError) as raised:
        downloader(failing_url, tmp_path / "again", **options).cloudevent(make_event(cartd_stack, files))
    sent = [request.header("Authorization") for request in proxy.requests + failing.requests]
    assert all(value == "Basic " + CREDENTIAL_B64 for value in sent), f"the credentials were sent: {sent}"
    assert len(library_warnings(caplog)) >= 4, "retries and resumes were logged"
    for text in (caplog.text, str(raised.value), repr(raised.value), "\n".join(raised.value.attempts)):
        assert CREDENTIAL not in text
        assert CREDENTIAL_B64 not in text


# -- the proxy itself ----------------------------------------------------------------------


@pytest.mark.parametrize("action", ["reset", "truncate"])
def test_proxy_cuts_with_rst_or_fin(action: str) -> None:
    """The tool under the tests: ``reset`` ends with a RST, ``truncate`` with a FIN, both after exactly N bytes."""
    body = os.urandom(100_000)
    with StubCartd(body=body) as stub, FaultProxy.for_url(stub.url, [Fault("GET", action, after=1000)]) as proxy:
        stub._carts.add("cart")  # a cart the stub will serve without a POST
        received = b""
        outcome = "eof"
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(b"GET /cart?filename=data HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
            while True:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    outcome = "reset"
                    break
                if not data:
                    break
                received += data
        head, _, got = received.partition(b"\r\n\r\n")
        assert b"Connection: close" in head and b"200" in head.split(b"\r\n")[0]
        assert got == body[:1000]
        assert outcome == ("reset" if action == "reset" else "eof")
        (request,) = proxy.requests
        assert (request.method, request.index, request.fault, request.status, request.body_bytes) == (
            "GET",
            1,
            action,
            200,
            1000,
        )
        assert stub.requests_for("GET")[0].headers.get("Connection") == "close", "forced on the forwarded request"
        assert proxy.errors == []
