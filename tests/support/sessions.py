"""The one recording session of the tests: a ``requests.Session`` that remembers every request it sent."""

from __future__ import annotations

import json
from typing import Any

import requests

__all__ = ["RecordingSession"]


class RecordingSession(requests.Session):
    """Remembers each request sent: ``sent`` as (method, url), with its body and timeout beside it.

    ``refuse=True`` records the request and fails it instead of sending it (a test that must send nothing).
    """

    def __init__(self, refuse: bool = False) -> None:
        super().__init__()
        self.refuse = refuse
        self.sent: list[tuple[str, str]] = []
        self.bodies: list[Any] = []  # each request's JSON body (None without one), beside ``sent``
        self.timeouts: list[tuple[str, Any]] = []  # (method, timeout) of each request
        self.posted: list[int] = []  # the number of files of each POST

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        method = method.upper()
        body = kwargs.get("data")
        if body is None and kwargs.get("json") is not None:
            body = json.dumps(kwargs["json"])
        try:
            parsed = json.loads(body) if isinstance(body, (str, bytes)) else None
        except ValueError:
            parsed = None
        self.sent.append((method, url))
        self.bodies.append(parsed)
        self.timeouts.append((method, kwargs.get("timeout")))
        if method == "POST" and isinstance(parsed, dict):
            self.posted.append(len(parsed.get("fileids", [])))
        if self.refuse:
            raise AssertionError(f"no request may be sent; {method} {url} was")
        return super().request(method, url, *args, **kwargs)

    def carts(self) -> list[str]:
        """The URL of each cart posted."""
        return [url for method, url in self.sent if method == "POST"]

    def posts(self) -> list[tuple[str, dict[str, Any]]]:
        """Each POST's URL and JSON body."""
        return [(url, body) for (method, url), body in zip(self.sent, self.bodies) if method == "POST"]

    def clear(self) -> None:
        """Forget what was sent so far."""
        for record in (self.sent, self.bodies, self.timeouts, self.posted):
            record.clear()
