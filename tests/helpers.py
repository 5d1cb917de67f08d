"""Small helpers shared by the test modules."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
import urllib3

from pacifica.downloader.incoming import HIDDEN_DIR
from pacifica.downloader.verified import INDEX_NAME


def incoming_leftovers(location: Path) -> list[str]:
    """What a finished download left in its hidden folder besides the verified-file index: should be nothing."""
    hidden = location / HIDDEN_DIR
    if hidden.is_symlink():
        return [str(hidden)]
    if not hidden.exists():
        return []
    return sorted(path.name for path in hidden.iterdir() if not path.name.startswith(INDEX_NAME))


def is_index_file(location: Path, path: Path) -> bool:
    """True for the verified-file index (and its SQLite journal) inside ``location``'s hidden folder."""
    return path.parent == location / HIDDEN_DIR and path.name.startswith(INDEX_NAME)


class Clock:
    """A stand-in for the ``time`` module: ``monotonic()`` reads ``now``, which the test (or ``sleep``) moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeBody:
    """A response body without a server: ``chunk`` bytes per read; the connection resets at byte ``fail_at``.

    Without ``fail_at`` the body simply ends (reads return ``b""``).
    """

    def __init__(self, body: bytes, chunk: int = 1 << 20, fail_at: int | None = None) -> None:
        self.body, self.pos, self.chunk, self.fail_at = body, 0, chunk, fail_at

    def read1(self, size: int) -> bytes:
        end = len(self.body) if self.fail_at is None else self.fail_at
        if self.fail_at is not None and self.pos >= self.fail_at:
            raise urllib3.exceptions.ProtocolError("Connection broken: connection reset")
        piece = self.body[self.pos : self.pos + min(size, self.chunk, max(end - self.pos, 0))]
        self.pos += len(piece)
        return piece


class FakeResponse:
    """What :class:`~pacifica.downloader.stream.CartStream` needs of a ``requests.Response``."""

    def __init__(self, raw: FakeBody, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.raw, self.status_code, self.headers = raw, status, headers or {}

    def close(self) -> None:
        pass


def fake_response(body: bytes, chunk: int = 1 << 20, **kwargs: Any) -> FakeResponse:
    """A 200 answer whose body comes ``chunk`` bytes per read."""
    return FakeResponse(FakeBody(body, chunk), **kwargs)


def assert_tree(root: Path, files: dict[str, bytes]) -> None:
    """``root`` holds exactly ``files`` and nothing else (no incoming folder, no partials)."""
    found = {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and not is_index_file(root, path)
    }
    assert found == files
    assert incoming_leftovers(root) == []


def cart_gone(url: str) -> bool:
    return requests.head(url, timeout=10).status_code == 404


class JsonServer:
    """Serves fixed JSON documents by path on loopback (a Policy service stand-in); a context manager.

    ``JsonServer({"/status/transactions/by_id/67": {...}})``: a GET of a listed
    path answers 200 with its document, any other 404.  ``url`` is the base URL.
    The mapping is read at each request: a test may fill it once the server runs.
    """

    def __init__(self, documents: dict[str, Any]) -> None:

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                found = self.path in documents
                body = json.dumps(documents[self.path] if found else {"error": "not found"}).encode()
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> JsonServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
