"""A small HTTP/1.1 fault-injection proxy for loopback tests: the real Cartd behind it, our faults in front.

:class:`FaultProxy` listens on ``127.0.0.1`` (a free port) and forwards each
client connection to ``127.0.0.1:upstream_port`` (a real Cartd of the
``cartd_stack`` fixture).  It reads each request's head and body, counts the
requests of each method, and when a :class:`Fault` matches the Nth request
of a method it misbehaves in one of these ways:

``reset``
    forward, relay the answer's head and ``after`` body bytes, then send a
    TCP RST (``SO_LINGER`` 0 and close): a connection reset mid-stream;
``truncate``
    the same but with a clean FIN: a body cut short (a truncated chunked
    body, or fewer bytes than ``Content-Length``);
``trickle``
    relay ``after`` body bytes, then one byte every ``interval`` seconds;
``silent``
    relay the answer's head (and ``after`` body bytes), then say nothing
    more while holding the connection open;
``respond``
    answer ``status`` with ``headers`` and ``body`` itself, without
    forwarding (e.g. ``503`` with ``Retry-After: 1``);
``drop_reply``
    forward the request and read Cartd's whole answer (so a POST does create
    the cart), then close the client's connection without a reply;
``mute``
    read the request and never answer, holding the connection open: a server
    that accepts connections and says nothing;
``trickle_head``
    relay the whole answer, its status line and headers included, one byte
    every ``interval`` seconds;
``late``
    forward the request, and relay Cartd's answer only ``interval`` seconds
    later (a busy server that answers slowly but does answer).

Keep-alive is not supported: ``Connection: close`` is forced on every
forwarded request and every relayed answer, so each request is its own
connection (clients such as ``requests`` then open a new one per request).

Every request is logged (:attr:`FaultProxy.requests`) with its headers, the
fault applied and the status Cartd answered, so a test can assert that a
``Range`` request was sent and answered ``206``, or how many ``HEAD`` s
arrived.

The proxy is bounded in time: every socket has a timeout, a fault never
holds a connection longer than ``max_hold`` seconds, and :meth:`close` (or
leaving the ``with`` block) shuts every socket down and joins every thread.
Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import select
import socket
import struct
import termios
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["ACTIONS", "Fault", "FaultProxy", "ProxyRequest"]

#: The things a fault can do; see the module docstring.
ACTIONS = ("reset", "truncate", "trickle", "silent", "respond", "drop_reply", "mute", "trickle_head", "late")

_LOOPBACK = "127.0.0.1"
_MAX_HEAD = 64 * 1024
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection"}
_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    206: "Partial Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(frozen=True)
class Fault:
    """Misbehave on requests number ``first`` .. ``first + count - 1`` of ``method`` (1-based).

    ``count=None`` means every request of ``method`` from ``first`` on.
    ``after``: body bytes relayed before a ``reset``/``truncate``/``silent``/
    ``trickle`` starts (raw bytes on the wire, chunk framing included).
    ``interval``: seconds between trickled bytes, or of a ``late`` answer's delay.  ``status``, ``headers``,
    ``body``: the answer of a ``respond`` fault.
    """

    method: str
    action: str
    first: int = 1
    count: int | None = 1
    after: int = 0
    interval: float = 0.3
    status: int = 503
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __post_init__(self) -> None:
        """Refuse unknown actions and meaningless numbers."""
        if self.action not in ACTIONS:
            raise ValueError("unknown fault action {!r}; one of {}".format(self.action, ", ".join(ACTIONS)))
        if self.first < 1 or (self.count is not None and self.count < 1) or self.after < 0:
            raise ValueError("first and count must be >= 1 and after >= 0")
        object.__setattr__(self, "method", self.method.upper())

    def applies(self, method: str, index: int) -> bool:
        """Whether this fault acts on request number ``index`` (1-based) of ``method``."""
        if method != self.method or index < self.first:
            return False
        return self.count is None or index < self.first + self.count


@dataclass
class ProxyRequest:
    """One request the proxy received.

    ``index`` is its number among requests of the same method (1-based);
    ``fault`` the action applied (None when forwarded untouched);
    ``status`` the status the client was sent or Cartd answered (None when
    no answer came); ``body_bytes`` the body bytes relayed to the client.
    """

    method: str
    target: str
    headers: list[tuple[str, str]]
    index: int
    fault: str | None
    body: bytes = b""
    status: int | None = None
    body_bytes: int = 0
    #: The client hung up while a fault still held the connection (it gave up; the proxy did not end it).
    client_gave_up: bool = False
    #: Set once the proxy is done with this request (its fault, if any, has ended).
    finished: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def path(self) -> str:
        """The request target without its query."""
        return self.target.split("?", 1)[0]


class _Closed(Exception):
    """A socket ended (EOF, error, timeout or the proxy closing); the connection is over."""


class FaultProxy:
    """A loopback HTTP proxy in front of ``127.0.0.1:upstream_port`` that injects :class:`Fault` s.

    ``timeout``: seconds any socket operation may block.  ``max_hold``:
    the longest a ``silent`` or ``trickle`` fault keeps a connection.
    Use it as a context manager::

        with FaultProxy(port, [Fault("GET", "reset", after=50_000)]) as proxy:
            Downloader(path, proxy.url).cloudevent(event)
            assert proxy.count("GET") == 2
    """

    def __init__(
        self, upstream_port: int, faults: Sequence[Fault] = (), *, timeout: float = 10.0, max_hold: float = 20.0
    ) -> None:
        """Prepare a proxy to ``127.0.0.1:upstream_port``; :meth:`start` (or ``with``) opens it."""
        self.upstream = (_LOOPBACK, int(upstream_port))
        self.faults = list(faults)
        self.timeout = timeout
        self.max_hold = max_hold
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._counts: dict[str, int] = {}
        self._requests: list[ProxyRequest] = []
        self._errors: list[str] = []
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------

    @classmethod
    def for_url(cls, url: str, faults: Sequence[Fault] = (), **options: float) -> FaultProxy:
        """A proxy in front of the loopback service at ``url`` (``http://127.0.0.1:PORT``)."""
        port = int(url.rstrip("/").rsplit(":", 1)[1].split("/", 1)[0])
        return cls(port, faults, **options)

    def start(self) -> FaultProxy:
        """Start listening on a free loopback port; return ``self``."""
        if self._listener is not None:
            raise RuntimeError("the proxy is already running")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((_LOOPBACK, 0))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._acceptor.start()
        return self

    def close(self) -> None:
        """Stop accepting, shut every open socket down and join every thread; idempotent."""
        self._stop.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=self.timeout)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=self.timeout)

    def __enter__(self) -> FaultProxy:
        """Start the proxy."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Close the proxy."""
        self.close()

    # -- what tests use ------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        if self._listener is None:
            raise RuntimeError("the proxy is not running")
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        """The base URL to give the library instead of Cartd's, ``http://127.0.0.1:PORT``."""
        return f"http://{_LOOPBACK}:{self.port}"

    @property
    def requests(self) -> list[ProxyRequest]:
        """Every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def errors(self) -> list[str]:
        """Unexpected proxy-side problems (a malformed request, Cartd unreachable)."""
        with self._lock:
            return list(self._errors)

    def requests_for(self, method: str) -> list[ProxyRequest]:
        """The requests received with ``method``."""
        return [request for request in self.requests if request.method == method.upper()]

    def count(self, method: str) -> int:
        """How many ``method`` requests arrived."""
        return len(self.requests_for(method))

    def methods(self) -> list[str]:
        """The methods of every request, in order."""
        return [request.method for request in self.requests]

    # -- the connection handling -------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(self.timeout)
            thread = threading.Thread(target=self._serve, args=(client,), name="fault-proxy-conn", daemon=True)
            with self._lock:
                self._sockets.add(client)
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.add(sock)
        if self._stop.is_set():  # closing raced with this connection
            sock.close()
            raise _Closed("the proxy is closing")
        return sock

    def _forget(self, sock: socket.socket | None, reset: bool = False) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.discard(sock)
        try:
            if reset:
                # Linger 0 then close: the kernel sends a RST instead of a FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        except OSError:
            pass

    def _error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text)

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        request: ProxyRequest | None = None
        reset = False
        try:
            head, rest = _read_head(client, b"")
            request = self._parse_request(head)
            length = int(request.header("Content-Length") or 0)
            if request.header("Transfer-Encoding"):
                self._error("chunked request bodies are not supported")
                _send(client, _canned(501, {}, b"chunked request bodies are not supported", request.method))
                return
            body = rest
            while len(body) < length:
                body += _recv(client)
            request.body = body[:length]
            fault = self._match(request)
            if fault is not None and fault.action == "mute":
                self._hold(client, request)
                return
            if fault is not None and fault.action == "respond":
                request.status = fault.status
                _send(client, _canned(fault.status, fault.headers, fault.body, request.method))
                return
            try:
                upstream = self._track(socket.create_connection(self.upstream, timeout=self.timeout))
            except OSError as err:
                self._error("cannot reach Cartd at {}:{}: {}".format(*self.upstream, err))
                _send(client, _canned(502, {}, b"proxy: upstream unreachable", request.method))
                return
            _send(upstream, _request_head(request) + request.body)
            if fault is not None and fault.action == "drop_reply":
                answer = b""
                while True:
                    try:
                        answer += _recv(upstream)
                    except _Closed:
                        break
                request.status = _status_of(answer)
                return  # the client's connection closes unanswered
            head, body = _read_head(upstream, b"")
            request.status = _status_of(head)
            if fault is not None and fault.action == "late" and self._stop.wait(fault.interval):
                return
            if fault is not None and fault.action == "trickle_head":
                self._trickle(client, upstream, _response_head(head) + body, request, fault)
                return
            _send(client, _response_head(head))
            late = fault is not None and fault.action == "late"  # late, but then whole
            reset = self._relay(client, upstream, body, request, None if late else fault)
        except _Closed:
            pass
        except Exception as err:  # noqa: BLE001 - never let a proxy thread die silently
            self._error(f"{type(err).__name__}: {err}")
        finally:
            self._forget(upstream)
            self._forget(client, reset=reset)
            if request is not None:
                request.finished.set()

    def _parse_request(self, head: bytes) -> ProxyRequest:
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
        method = method.upper()
        with self._lock:
            index = self._counts.get(method, 0) + 1
            self._counts[method] = index
            fault = next((f for f in self.faults if f.applies(method, index)), None)
            request = ProxyRequest(method, target, headers, index, fault.action if fault else None)
            self._requests.append(request)
        return request

    def _match(self, request: ProxyRequest) -> Fault | None:
        if request.fault is None:
            return None
        return next(f for f in self.faults if f.applies(request.method, request.index))

    def _relay(
        self, client: socket.socket, upstream: socket.socket, pending: bytes, request: ProxyRequest, fault: Fault | None
    ) -> bool:
        """Relay the answer's body as ``fault`` says; return True when the client must get a RST."""
        limit = fault.after if fault is not None else None
        upstream_open = True
        # The untouched part: everything, or the first ``after`` bytes.
        while limit is None or request.body_bytes < limit:
            if not pending:
                if not upstream_open:
                    return False
                try:
                    pending = _recv(upstream)
                except _Closed:
                    upstream_open = False
                    if limit is None:
                        return False
                    continue
            take = len(pending) if limit is None else min(len(pending), limit - request.body_bytes)
            _send(client, pending[:take])
            request.body_bytes += take
            pending = pending[take:]
        assert fault is not None
        if fault.action in ("reset", "truncate"):
            self._drain(client)
            if fault.action == "truncate":
                client.shutdown(socket.SHUT_WR)
            return fault.action == "reset"
        if fault.action == "silent":
            self._hold(client, request)
            return False
        self._trickle(client, upstream if upstream_open else None, pending, request, fault)
        return False

    def _trickle(
        self, client: socket.socket, upstream: socket.socket | None, pending: bytes, request: ProxyRequest, fault: Fault
    ) -> None:
        """Send ``pending`` and then the rest of ``upstream`` one byte per interval, for at most ``max_hold``."""
        held_until = time.monotonic() + self.max_hold
        while time.monotonic() < held_until and not self._stop.wait(fault.interval):
            if _peer_closed(client, 0):
                request.client_gave_up = True
                return
            if not pending:
                if upstream is None:
                    return
                try:
                    pending = _recv(upstream)
                except _Closed:
                    upstream = None
                    continue
            try:
                _send(client, pending[:1])
            except _Closed:
                request.client_gave_up = True
                return
            request.body_bytes += 1
            pending = pending[1:]

    def _hold(self, client: socket.socket, request: ProxyRequest) -> None:
        """Say nothing more on ``client`` until it hangs up, the proxy closes, or ``max_hold`` passes."""
        held_until = time.monotonic() + self.max_hold
        while time.monotonic() < held_until and not self._stop.is_set():
            if _peer_closed(client, 0.05):
                request.client_gave_up = True
                break

    def _drain(self, sock: socket.socket) -> None:
        """Wait (bounded) until the kernel has sent everything queued, so a RST loses nothing already relayed."""
        stop_at = time.monotonic() + 2.0
        while time.monotonic() < stop_at:
            try:
                queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
            except OSError:
                return
            if queued == 0 or self._stop.wait(0.005):
                return


# -- HTTP helpers --------------------------------------------------------------


def _recv(sock: socket.socket) -> bytes:
    try:
        data = sock.recv(64 * 1024)
    except OSError as err:  # timeouts included
        raise _Closed(str(err)) from None
    if not data:
        raise _Closed("EOF")
    return data


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError as err:
        raise _Closed(str(err)) from None


def _read_head(sock: socket.socket, data: bytes) -> tuple[bytes, bytes]:
    """Read up to the blank line; return the head (without it) and the bytes after it."""
    while b"\r\n\r\n" not in data:
        if len(data) > _MAX_HEAD:
            raise _Closed("head too large")
        data += _recv(sock)
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _without_hop_by_hop(lines: list[str]) -> list[str]:
    return [line for line in lines if line.partition(":")[0].strip().lower() not in _HOP_BY_HOP]


def _request_head(request: ProxyRequest) -> bytes:
    lines = [f"{request.method} {request.target} HTTP/1.1"]
    lines += _without_hop_by_hop([f"{name}: {value}" for name, value in request.headers])
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _response_head(head: bytes) -> bytes:
    lines = head.decode("latin-1").split("\r\n")
    lines = lines[:1] + _without_hop_by_hop(lines[1:]) + ["Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _status_of(head: bytes) -> int | None:
    try:
        return int(head.split(b"\r\n", 1)[0].split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def _canned(status: int, headers: Mapping[str, str], body: bytes, method: str) -> bytes:
    lines = ["HTTP/1.1 {} {}".format(status, _REASONS.get(status, "Unknown"))]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if method == "HEAD" else head + body


def _peer_closed(sock: socket.socket, wait: float) -> bool:
    """Whether the peer closed (or reset) ``sock``; waits up to ``wait`` seconds for news."""
    readable, _, _ = select.select([sock], [], [], wait)
    if not readable:
        return False
    try:
        return sock.recv(4096, socket.MSG_PEEK) == b""
    except OSError:
        return True
