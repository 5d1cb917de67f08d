"""``pacifica-downloader serve`` as a process of its own, for the tests on the real facility.

It keeps its port across restarts (the Notifications event match's target),
can be SIGKILLed and started again, and waits for states it can observe: its
``/health`` answering, an event's ``/status`` reaching a state.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests

from support.cartd_stack import _Service

__all__ = ["ServeProcess", "wait_until"]

#: Seconds the service has to answer after a start.
READY_WITHIN = 60.0


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something true, and return that; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(every)  # polling an observable condition, not waiting for time to pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServeProcess:
    """``python -m pacifica.downloader serve`` into ``download_dir``, with ``env`` (broker, queue, token ...)."""

    def __init__(self, download_dir: Path, workdir: Path, env: Mapping[str, str], token: str | None) -> None:
        """Prepare (not start) the service; it logs into ``workdir/serve.log``."""
        self.download_dir = download_dir
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.token = token
        argv = [
            sys.executable,
            "-m",
            "pacifica.downloader",
            "serve",
            "--download-dir",
            str(download_dir),
            "--port",
            str(self.port),
            "-vv",
        ]
        environ = {key: value for key, value in env.items() if not key.startswith("DOWNLOADER_SERVE_TOKEN")}
        if token is not None:
            environ["DOWNLOADER_SERVE_TOKEN"] = token
        self.process = _Service("serve", argv, environ, workdir / "serve.log")

    def start(self) -> None:
        """Start the service and wait until it answers ``/health`` (whatever the broker's state)."""
        self.process.start(self.workdir)

        def answers() -> bool:
            if not self.process.running():
                raise AssertionError(f"the service died at start-up:\n{self.log()[-3000:]}")
            try:
                return requests.get(self.url + "health", timeout=10).status_code in (200, 503)
            except requests.ConnectionError:
                return False

        wait_until(answers, READY_WITHIN, "the download service answering /health")

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Send ``signum`` to the service and wait for it to end."""
        self.process.signal_group(signum)
        if self.process.proc is not None:
            self.process.proc.wait(30)
        self.process.close_log()

    def stop(self) -> None:
        """SIGTERM (a clean stop), SIGKILL after 20 s."""
        if not self.process.running():
            self.process.close_log()
            return
        self.process.request_stop()
        assert self.process.proc is not None
        try:
            self.process.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.process.signal_group(signal.SIGKILL)
            self.process.proc.wait(10)
        self.process.close_log()

    def log(self) -> str:
        """What the service logged, over every start."""
        return self.process.log_path.read_text(encoding="utf-8", errors="replace")

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def status(self, event: str) -> dict[str, Any]:
        """``GET /status/<event>``'s answer (``{}`` for an event not recorded)."""
        answer = requests.get(f"{self.url}status/{event}", headers=self._headers(), timeout=30)
        return {} if answer.status_code == 404 else dict(answer.json())

    def health(self) -> tuple[int, dict[str, Any]]:
        """``GET /health``: status code and answer."""
        answer = requests.get(self.url + "health", timeout=30)
        return answer.status_code, dict(answer.json())

    def post(self, body: bytes, token: str | None = None, **headers: str) -> requests.Response:
        """POST ``body`` as Notifications would, with ``token`` (default: the service's own)."""
        token = self.token if token is None else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        headers.setdefault("Content-Type", "application/json")
        return requests.post(self.url, data=body, headers=headers, timeout=30)

    def wait_for(self, event: str, state: str, timeout: float, task_state: str | None = None) -> dict[str, Any]:
        """Wait until event ``event`` stands in ``state`` (and its task in ``task_state``); return its status."""

        def reached() -> dict[str, Any] | None:
            status = self.status(event)
            if status.get("task_state") == "FAILURE":
                raise AssertionError(f"the download of {event} failed: {status.get('error')}")
            if status.get("state") == state and (task_state is None or status.get("task_state") == task_state):
                return status
            return None

        return dict(wait_until(reached, timeout, f"event {event} {state} {task_state or ''}".strip(), every=0.25))
