"""A small, configurable stand-in for Pacifica Cartd, for tests that need a server to misbehave.

:class:`StubCartd` speaks just enough of the Cartd protocol for
:class:`pacifica.downloader.Downloader`:

* ``POST {base}/{uid}`` (JSON ``{"fileids": [...]}``) creates the cart -> 201;
* ``HEAD {base}/{uid}`` -> the configured answers (default 204 with
  ``X-Pacifica-Status: ready``), 404 for a cart nobody created;
* ``GET {base}/{uid}?filename=NAME`` -> 200 and the body the test supplies
  (``body(uid, filename)``), optionally without ``Content-Length``, with
  ``Accept-Ranges: bytes`` and ``Range`` support, or cut short after N bytes;
* ``DELETE {base}/{uid}`` -> 200 (404 if unknown);
* any other ``GET`` the test's ``pages(path)`` answers (a Policy service's
  ``/status/transactions/by_id/<id>``, say) -> that answer.

And a hostile one, for the tests of secrets and hostile servers: ``echo``
puts the request's headers (and a Basic credential decoded), after terminal
escape sequences (:data:`HOSTILE`), into every reason phrase, every
``X-Pacifica-Message`` and every error body; ``post_body``/``post_headers``
give the POST's answer any body (lazily made, of any size) and headers (a
1 MiB line); ``gone_after_post`` closes every connection without an answer
once a cart is posted; ``tls`` serves HTTPS (:attr:`StubCartd.connections`
counts the TCP connections, handshakes that fail included).

Every request is recorded (:attr:`StubCartd.requests`) *before* it is
answered, so once a client call has returned a test can assert what the
server saw: that the cart was deleted, that no ``POST`` was sent, how many
times the tar was fetched.

The server listens on ``127.0.0.1`` on a free port, in a daemon thread, and
is bounded: use it as a context manager and it is shut down, its sockets
closed and its thread joined, on exit::

    with StubCartd(body=lambda uid, filename: make_tar(filename)) as cartd:
        Downloader(tmp_path / "dl", cartd.url).cloudevent(event)
        assert cartd.methods() == ["POST", "HEAD", "GET", "DELETE"]

Only the standard library is used.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import socket
import ssl
import struct
import sys
import threading
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Callable, Union
from urllib.parse import parse_qs, urlsplit

__all__ = ["HOSTILE", "READY", "STAGING", "BodySource", "PageAnswer", "StubCartd", "StubRequest"]

#: What a test gives as the GET body: fixed bytes, or ``body(uid, filename)``.
BodySource = Union[bytes, Callable[[str, str], bytes]]
#: A HEAD answer: status code and headers.
HeadAnswer = tuple[int, Mapping[str, str]]
#: An answer to a GET that is not a cart's: status code and JSON body.
PageAnswer = tuple[int, bytes]

#: Cartd's answer to HEAD on a cart ready to download.
READY: HeadAnswer = (204, {"X-Pacifica-Status": "ready"})
#: Cartd's answer to HEAD on a cart still being staged.
STAGING: HeadAnswer = (204, {"X-Pacifica-Status": "staging"})
#: What an echoing stub puts before the headers it echoes: a window title, a cleared screen, red text.
HOSTILE = "\x1b]0;owned\x07\x1b[2J\x1b[31m"

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
#: Seconds a handler waits on a silent client socket before giving up, so no
#: handler thread can outlive a test by long.
_SOCKET_TIMEOUT = 10.0


@dataclass(frozen=True)
class StubRequest:
    """One request the stub received.

    ``path`` is the raw request path with its query, ``uid`` its last path
    segment (the cart id), ``query`` the parsed query string.
    """

    method: str
    path: str
    uid: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        """The body parsed as JSON (the cart's ``fileids`` for a POST)."""
        return json.loads(self.body.decode("utf-8"))

    @property
    def filename(self) -> str | None:
        """The ``filename`` query parameter of a GET, if any."""
        values = self.query.get("filename")
        return values[0] if values else None


@dataclass
class _Counters:
    head: int = 0
    get: int = 0
    connections: int = 0


def _echo(headers: Mapping[str, str]) -> str:
    """What an echoing server says: :data:`HOSTILE`, then every header, a Basic credential decoded too."""
    first = ("authorization", "proxy-authorization", "cookie", "x-api-key")  # what an auth proxy quotes first
    ordered = sorted(headers.items(), key=lambda item: item[0].lower() not in first)
    parts = [f"{name}: {value}" for name, value in ordered]
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        with contextlib.suppress(binascii.Error, ValueError):
            parts.append("decoded: " + base64.b64decode(token).decode("latin-1"))
    return HOSTILE + "invalid credentials: " + "; ".join(parts)


class _Handler(BaseHTTPRequestHandler):
    """Answers one connection's requests according to the owning :class:`StubCartd`."""

    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = _SOCKET_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Keep the test output quiet."""

    def setup(self) -> None:
        """Complete the TLS handshake first, in this thread (a client that refuses it ends the connection)."""
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(_SOCKET_TIMEOUT)
            self.request.do_handshake()
        super().setup()

    def handle_one_request(self) -> None:
        """Answer one request, or, once the server is gone after a POST, close the connection without an answer."""
        if self.server.stub._gone:
            self.close_connection = True
            return
        super().handle_one_request()

    def send_response(self, code: int, message: str | None = None) -> None:
        """The status line; an echoing stub appends the request's headers to the reason phrase."""
        stub = self.server.stub
        if stub.echo:
            phrase = message or (self.responses[code][0] if code in self.responses else "")
            message = f"{phrase} {_echo(self.headers)}"
        super().send_response(code, message)

    def end_headers(self) -> None:
        """An echoing stub sends the request's headers in ``X-Pacifica-Message`` too (unless the answer has one)."""
        if self.server.stub.echo and not self._has_header("X-Pacifica-Message"):
            self.send_header("X-Pacifica-Message", _echo(self.headers))
        super().end_headers()

    def _has_header(self, name: str) -> bool:
        sent = b"".join(getattr(self, "_headers_buffer", []))
        return f"\r\n{name.lower()}:".encode() in sent.lower()

    # -- helpers -----------------------------------------------------------

    def _record(self, body: bytes = b"") -> StubRequest:
        parts = urlsplit(self.path)
        request = StubRequest(
            method=self.command,
            path=self.path,
            uid=parts.path.rstrip("/").rsplit("/", 1)[-1],
            query=parse_qs(parts.query),
            headers={key: value for key, value in self.headers.items()},
            body=body,
        )
        self.server.stub._record(request)
        return request

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _simple(self, status: int, headers: Mapping[str, str] | None = None, body: bytes = b"") -> None:
        if self.server.stub.echo and status >= 400:
            body = _echo(self.headers).encode("utf-8")
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.command != "HEAD" or body:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Content-Length", "0")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    # -- the methods Cartd answers -------------------------------------------

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        """Create the cart."""
        request = self._record(self._read_body())
        stub = self.server.stub
        if stub.post_status == 201:
            stub._carts.add(request.uid)
        if stub.post_body is not None or stub.post_headers:
            self._stream(stub.post_status, stub.post_headers, stub.post_body)
        else:
            self._simple(stub.post_status, body=b'{"message": "stub"}' if stub.post_status != 201 else b"")
        if stub.gone_after_post:
            stub._gone = True
            self.close_connection = True

    def _stream(self, status: int, headers: Mapping[str, str], body: Callable[[], Iterable[bytes]] | None) -> None:
        """Answer ``status`` with ``headers`` and the pieces ``body()`` yields, made as they are sent; without a
        ``Content-Length`` among the headers the body ends with the connection."""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if body is None:
            self.send_header("Content-Length", "0")
        elif "content-length" not in {key.lower() for key in headers}:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        try:
            for piece in body() if body is not None else ():
                self.wfile.write(piece)
        except OSError:
            self.close_connection = True  # the client stopped reading: the rest is never made

    def do_HEAD(self) -> None:  # noqa: N802
        """Report the cart's status."""
        request = self._record()
        stub = self.server.stub
        if request.uid not in stub._carts:
            self._simple(404)
            return
        status, headers = stub._next_head()
        self._simple(status, headers)

    def do_DELETE(self) -> None:  # noqa: N802
        """Delete the cart."""
        request = self._record(self._read_body())
        stub = self.server.stub
        if request.uid not in stub._carts:
            self._simple(404)
            return
        stub._carts.discard(request.uid)
        self._simple(stub.delete_status)

    def do_GET(self) -> None:  # noqa: N802
        """Send the cart's tar as configured: whole, ranged, or cut short."""
        request = self._record()
        stub = self.server.stub
        page = stub.pages(urlsplit(request.path).path) if stub.pages is not None else None
        if page is not None:
            self._simple(page[0], {"Content-Type": "application/json"}, page[1])
            return
        if request.uid not in stub._carts:
            self._simple(404)
            return
        index = stub._next_get()
        if stub.get_status != 200:
            self._simple(stub.get_status, body=b"stub error")
            return
        source = stub.body
        try:
            body = source(request.uid, request.filename or request.uid) if callable(source) else bytes(source)
        except Exception:  # a bug in the test's body callable: report it, never hang the client
            text = traceback.format_exc()
            stub._error(text)
            self._simple(500, body=text.encode("utf-8", "replace"))
            return
        status, start = 200, 0
        match = _RANGE.match(self.headers.get("Range", "")) if stub.accept_ranges else None
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(body) - 1
            if start >= len(body) or end < start:
                self._simple(416, {"Content-Range": f"bytes */{len(body)}"})
                return
            status = 206
            total = len(body)
            body = body[start : end + 1]
        close_after = stub._close_after(index)
        self.send_response(status)
        self.send_header("Content-Type", "application/x-tar")
        for key, value in stub.get_headers.items():
            self.send_header(key, value)
        if stub.accept_ranges:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{total}")
        if stub.content_length:
            self.send_header("Content-Length", str(len(body)))
        if not stub.content_length or close_after is not None:
            # The body ends where the connection does.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        payload = body if close_after is None else body[:close_after]
        try:
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:
            return  # the client went away; nothing to do
        if close_after is not None:
            self._cut(stub.reset)

    def _cut(self, reset: bool) -> None:
        """End the connection now: a clean FIN, or a RST when ``reset``."""
        self.close_connection = True
        try:
            if reset:
                # Linger 0 then a real close (not the server's usual shutdown,
                # which would send a FIN first) makes the kernel send a RST.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                os.close(self.connection.detach())
            else:
                self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    stub: StubCartd

    def get_request(self) -> tuple[socket.socket, Any]:
        """Count the connection; with ``tls``, wrap it (the handshake happens in the handler's thread)."""
        sock, address = super().get_request()
        stub = self.stub
        with stub._lock:
            stub._counters.connections += 1
        if stub.tls is not None:
            sock = stub.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (reset, broken pipe) is normal here; any other error is kept in ``errors``."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        self.stub._error(traceback.format_exc())


@dataclass
class StubCartd:
    """A stub Cartd on ``127.0.0.1`` (free port), configured per test; a context manager.

    ``body``: the GET body, bytes or ``body(uid, filename)`` (``filename`` is
    the ``filename`` query parameter, the uid when absent).
    ``head``: the HEAD answers in order, the last one repeated (default
    :data:`READY`), or a callable giving each answer when it is asked for.
    ``pages``: ``pages(path)`` answers a GET of ``path`` (no query) that is
    not a cart's, or returns None to let it be one.
    ``post_status``, ``get_status``, ``delete_status``: the status of those
    answers (a non-201 POST creates no cart).
    ``content_length``: send ``Content-Length`` on GET (else the body ends
    when the connection closes).
    ``accept_ranges``: send ``Accept-Ranges: bytes`` and honour ``Range``
    with 206 / ``Content-Range``.
    ``close_after``: cut GET bodies short: an int applies to every GET, a
    sequence gives the value for the 1st, 2nd, ... GET (``None`` = whole
    body; GETs past its end are whole).  The headers still announce the full
    length, so the client sees the connection drop mid-body.
    ``reset``: end a cut connection with a RST instead of a clean FIN.
    ``get_headers``: extra headers on every GET answer.
    ``echo``: put the request's headers, after :data:`HOSTILE`, into every
    reason phrase, ``X-Pacifica-Message`` and error body.
    ``post_body``: a callable whose pieces make the POST's answer body (made
    as sent: any size), with ``post_headers`` (no ``Content-Length``: the
    body ends with the connection).
    ``gone_after_post``: once a POST is answered, close every connection
    without an answer.
    ``tls``: a server-side ``ssl.SSLContext``: serve HTTPS.

    If the ``body`` callable raises, the GET is answered 500 with the
    traceback and the traceback is kept in :attr:`errors`, so a broken test
    shows as such instead of as a network failure.
    """

    body: BodySource = b""
    head: Sequence[HeadAnswer] | Callable[[], HeadAnswer] = (READY,)
    pages: Callable[[str], PageAnswer | None] | None = None
    post_status: int = 201
    get_status: int = 200
    delete_status: int = 200
    content_length: bool = True
    accept_ranges: bool = False
    close_after: None | int | Sequence[int | None] = None
    reset: bool = False
    get_headers: Mapping[str, str] = field(default_factory=dict)
    echo: bool = False
    post_body: Callable[[], Iterable[bytes]] | None = None
    post_headers: Mapping[str, str] = field(default_factory=dict)
    gone_after_post: bool = False
    tls: ssl.SSLContext | None = None

    _gone: bool = field(default=False, init=False, repr=False)
    _requests: list[StubRequest] = field(default_factory=list, init=False, repr=False)
    _errors: list[str] = field(default_factory=list, init=False, repr=False)
    _carts: set[str] = field(default_factory=set, init=False, repr=False)
    _counters: _Counters = field(default_factory=_Counters, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _server: _Server | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> StubCartd:
        """Start listening; return ``self``.  Prefer the ``with`` statement."""
        if self._server is not None:
            raise RuntimeError("the stub Cartd is already running")
        if not callable(self.head) and not self.head:
            raise ValueError("head needs at least one answer")
        server = _Server(("127.0.0.1", 0), _Handler)
        server.stub = self
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="stub-cartd", daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and join the thread; idempotent."""
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=_SOCKET_TIMEOUT)

    def __enter__(self) -> StubCartd:
        """Start the server."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Stop the server."""
        self.stop()

    # -- what tests use ------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to give the library, ``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError("the stub Cartd is not running")
        port = self._server.server_address[1]
        return f"{'https' if self.tls is not None else 'http'}://127.0.0.1:{port}"

    @property
    def requests(self) -> list[StubRequest]:
        """A copy of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def errors(self) -> list[str]:
        """Tracebacks of exceptions raised by the ``body`` callable (each answered with a 500)."""
        with self._lock:
            return list(self._errors)

    @property
    def connections(self) -> int:
        """How many TCP connections were accepted (with ``tls``, those whose handshake failed too)."""
        with self._lock:
            return self._counters.connections

    def methods(self) -> list[str]:
        """The methods of the requests received so far, in order."""
        return [request.method for request in self.requests]

    def requests_for(self, method: str) -> list[StubRequest]:
        """The requests received with ``method``."""
        return [request for request in self.requests if request.method == method.upper()]

    def count(self, method: str) -> int:
        """How many ``method`` requests were received."""
        return len(self.requests_for(method))

    def cart_ids(self) -> list[str]:
        """The uids of the carts POSTed, in order."""
        return [request.uid for request in self.requests_for("POST")]

    def live_carts(self) -> dict[str, Any]:
        """The carts that exist now (posted, not deleted), each with the ``fileids`` it was posted with."""
        with self._lock:
            live = set(self._carts)
        return {request.uid: request.json()["fileids"] for request in self.requests_for("POST") if request.uid in live}

    def deleted(self, uid: str | None = None) -> bool:
        """Whether a DELETE was received for ``uid`` (default: for every POSTed cart, and there was one)."""
        deleted = {request.uid for request in self.requests_for("DELETE")}
        if uid is not None:
            return uid in deleted
        posted = self.cart_ids()
        return bool(posted) and all(cart in deleted for cart in posted)

    # -- used by the handler -------------------------------------------------------

    def _record(self, request: StubRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text)

    def _next_head(self) -> HeadAnswer:
        if callable(self.head):
            return self.head()
        with self._lock:
            index = self._counters.head
            self._counters.head += 1
        return self.head[min(index, len(self.head) - 1)]

    def _next_get(self) -> int:
        with self._lock:
            index = self._counters.get
            self._counters.get += 1
        return index

    def _close_after(self, index: int) -> int | None:
        if self.close_after is None or isinstance(self.close_after, int):
            return self.close_after
        plan = list(self.close_after)
        return plan[index] if index < len(plan) else None
