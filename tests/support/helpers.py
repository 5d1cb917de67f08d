"""Small helpers shared by the test modules."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import requests
import urllib3

from pacifica.downloader._incoming import HIDDEN_DIR
from pacifica.downloader._ledger import LEDGER_DIR
from pacifica.downloader._task_starts import STARTS_DIR
from pacifica.downloader._verified import INDEX_NAME


def incoming_leftovers(location: Path) -> list[str]:
    """What a finished download left in its hidden folder besides the verified-file index and the empty folders
    of cart ledgers and task starts: should be nothing (a ledger file left means a cart left on the server)."""
    hidden = location / HIDDEN_DIR
    if hidden.is_symlink():
        return [str(hidden)]
    if not hidden.exists():
        return []
    records = (LEDGER_DIR, STARTS_DIR)
    left = [path.name for path in hidden.iterdir() if not path.name.startswith(INDEX_NAME) and path.name not in records]
    for folder in records:
        if (hidden / folder).is_dir():
            left += [f"{folder}/{path.name}" for path in (hidden / folder).iterdir()]
    return sorted(left)


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
    """What :class:`~pacifica.downloader._stream.CartStream` needs of a ``requests.Response``."""

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


def wait_until(condition: Callable[[], object], limit: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail after ``limit`` seconds (a bound, not a timing assertion)."""
    end = time.monotonic() + limit
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not within {limit:.0f} s: {what}")
        time.sleep(0.02)
