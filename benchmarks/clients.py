"""The contenders, each run as a separate process whose time and peak memory are measured.

* :func:`run_current` and :func:`run_release`: this library and the last
  release, through ``client_current.py`` / ``client_release.py``, which time
  the download call themselves and report their own peak RSS (VmHWM);
* :func:`curl_tar` and :func:`curl_null`: ``curl | tar -x`` and ``curl -o
  /dev/null`` on a ready cart, the floor any client can reach, timed from
  spawning to exit;
* :class:`CartServer`: the bench's own Cartd client: the bare poller, which
  POSTs a cart and sends a ``HEAD`` every 10 ms until the server says
  "ready", and the clean-up of carts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
import venv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

__all__ = [
    "RELEASE_REQUIREMENT",
    "CartServer",
    "ChildRun",
    "ClientError",
    "curl_null",
    "curl_tar",
    "ensure_release_venv",
    "run_current",
    "run_release",
]

HERE = Path(__file__).resolve().parent
#: The release the library is compared with.
RELEASE_REQUIREMENT = "pacifica-downloader==0.4.1"
#: Seconds between the bare poller's HEAD requests (by default).
POLL_INTERVAL = 0.01
#: No single client run (or cart) may take longer than this, in seconds: a hang is a failure, not a stall.
CHILD_TIMEOUT = 1800.0


class ClientError(RuntimeError):
    """A client process failed; the message holds its exit status and the end of its stderr.

    ``answer`` is whatever JSON the client printed before failing (the release's cart URL, say).
    """

    def __init__(self, message: str, answer: dict[str, Any] | None = None) -> None:
        """Record ``message`` and the client's partial ``answer``."""
        super().__init__(message)
        self.answer = answer or {}


@dataclass(frozen=True)
class ChildRun:
    """One timed run: seconds, the process's peak RSS (KiB, when known) and the client's JSON answer."""

    seconds: float
    max_rss_kib: int | None = None
    answer: dict[str, Any] = field(default_factory=dict)

    @property
    def max_rss_mib(self) -> float | None:
        """Peak resident set size in MiB."""
        return None if self.max_rss_kib is None else self.max_rss_kib / 1024.0


def child_env() -> dict[str, str]:
    """The environment of every client: ours, with loopback kept away from any proxy."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    for key in ("NO_PROXY", "no_proxy"):
        env[key] = ",".join(filter(None, [env.get(key), "127.0.0.1,localhost"]))
    return env


def _wait(proc: subprocess.Popen[bytes], what: str) -> int:
    """Wait for ``proc`` at most :data:`CHILD_TIMEOUT` seconds (then kill it); return its exit code."""
    try:
        return proc.wait(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise ClientError(f"{what} did not finish in {CHILD_TIMEOUT:.0f} s; killed") from None


def run_python_client(python: Path, script: str, args: list[str]) -> ChildRun:
    """Run ``python script args``; return the time and peak RSS it reports."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [str(python), str(HERE / script), *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=child_env()
        )
        code = _wait(proc, f"{script} {args[0]}")
        out.seek(0)
        err.seek(0)
        lines = out.read().decode("utf-8", "replace").strip().splitlines()
        answer: dict[str, Any] = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
        if code != 0:
            tail = err.read().decode("utf-8", "replace").strip().splitlines()[-6:]
            raise ClientError(f"{script} {args[0]} exited with {code}: " + " / ".join(tail), answer)
    return ChildRun(seconds=float(answer["seconds"]), max_rss_kib=answer.get("peak_rss_kib"), answer=answer)


def _client_args(mode: str, cart_api: str, event_file: Path, dest: Path, *extra: str) -> list[str]:
    return [mode, "--cart-url", cart_api, "--event", str(event_file), "--dest", str(dest), *extra]


def run_current(
    mode: str,
    cart_api: str,
    event_file: Path,
    dest: Path,
    *,
    ready_carts: Path | None = None,
    record_carts: Path | None = None,
    max_staging: int | None = None,
    one_cart: bool = False,
) -> ChildRun:
    """Time this library (``e2e``, ``rerun`` or ``transfer``) with the interpreter running the benchmark."""
    extra: list[str] = []
    if ready_carts:
        extra += ["--ready-carts", str(ready_carts)]
    if record_carts:
        extra += ["--record-carts", str(record_carts)]
    if max_staging:
        extra += ["--max-staging", str(max_staging)]
    if one_cart:
        extra += ["--one-cart"]
    return run_python_client(
        Path(sys.executable), "client_current.py", _client_args(mode, cart_api, event_file, dest, *extra)
    )


def run_release(
    python: Path, mode: str, cart_api: str, event_file: Path, dest: Path, ready_cart: str | None = None
) -> ChildRun:
    """Time the release (``e2e`` or ``transfer`` of ``ready_cart``) with the release virtualenv's ``python``."""
    extra = ["--ready-cart", ready_cart] if ready_cart else []
    return run_python_client(python, "client_release.py", _client_args(mode, cart_api, event_file, dest, *extra))


def _curl(cart_url: str) -> list[str]:
    return ["curl", "-s", "-f", "--noproxy", "*", f"{cart_url}?filename=data"]


def curl_tar(cart_url: str, dest: Path) -> ChildRun:
    """Time ``curl -s URL?filename=data | tar -x -C dest`` from spawning curl until both have exited."""
    dest.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    curl = subprocess.Popen(_curl(cart_url), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    tar = subprocess.Popen(["tar", "-x", "-C", str(dest)], stdin=curl.stdout)
    assert curl.stdout is not None
    curl.stdout.close()  # tar holds the pipe now
    curl_code, tar_code = _wait(curl, "curl"), _wait(tar, "tar")
    seconds = time.perf_counter() - started
    if curl_code or tar_code:
        raise ClientError(f"curl | tar failed: curl exited with {curl_code}, tar with {tar_code}")
    return ChildRun(seconds=seconds)


def curl_null(cart_url: str) -> ChildRun:
    """Time ``curl -s -o /dev/null URL?filename=data``: the server's stream alone."""
    started = time.perf_counter()
    code = _wait(subprocess.Popen([*_curl(cart_url), "-o", os.devnull], stdin=subprocess.DEVNULL), "curl")
    seconds = time.perf_counter() - started
    if code:
        raise ClientError(f"curl -o /dev/null exited with {code}")
    return ChildRun(seconds=seconds)


class CartServer:
    """The bench's own plain HTTP client of Cartd: creates carts, times readiness, deletes carts."""

    def __init__(self, cart_api: str, poll_interval: float = POLL_INTERVAL) -> None:
        """Talk to the Cartd at ``cart_api`` (loopback; proxies ignored); poll every ``poll_interval`` seconds."""
        self.cart_api = cart_api.rstrip("/")
        self.poll_interval = poll_interval
        self.session = requests.Session()
        self.session.trust_env = False

    def create(self, body: bytes) -> str:
        """POST a cart with the JSON body given; return its URL."""
        cart_url = f"{self.cart_api}/{uuid.uuid4().hex}"
        response = self.session.post(cart_url, data=body, headers={"Content-Type": "application/json"})
        if response.status_code != 201:
            raise ClientError(f"POST {cart_url} answered {response.status_code}: {response.text[:300]}")
        return cart_url

    def is_ready(self, cart_url: str) -> bool:
        """HEAD the cart once: True when ready, False while staging; raise when it failed or is gone."""
        head = self.session.head(cart_url)
        status = head.headers.get("X-Pacifica-Status", "")
        if head.status_code == 204 and status == "ready":
            return True
        if status == "error" or head.status_code == 404:
            raise ClientError(f"cart {cart_url} failed: {head.headers.get('X-Pacifica-Message', '')[:300]}")
        return False

    def create_and_wait(self, body: bytes) -> tuple[str, float, int]:
        """POST a cart, HEAD it every poll interval until ready; return (URL, seconds from POST to ready, polls)."""
        started = time.perf_counter()
        cart_url = self.create(body)
        polls = 0
        try:
            while True:
                polls += 1
                if self.is_ready(cart_url):
                    return cart_url, time.perf_counter() - started, polls
                if time.perf_counter() - started > CHILD_TIMEOUT:
                    raise ClientError(f"cart {cart_url} not ready after {CHILD_TIMEOUT:.0f} s")
                time.sleep(self.poll_interval)
        except BaseException:
            self.delete(cart_url)
            raise

    def stage_all(self, bodies: list[bytes]) -> list[str]:
        """POST one cart per body, then wait (polling every 0.1 s) until every one is ready; return their URLs."""
        carts = [self.create(body) for body in bodies]
        deadline = time.perf_counter() + CHILD_TIMEOUT
        try:
            pending = list(carts)
            while pending:
                pending = [cart for cart in pending if not self.is_ready(cart)]
                if pending and time.perf_counter() > deadline:
                    raise ClientError(f"{len(pending)} cart(s) not ready after {CHILD_TIMEOUT:.0f} s")
                time.sleep(0.1 if pending else 0)
        except BaseException:
            for cart in carts:
                self.delete(cart)
            raise
        return carts

    def delete(self, cart_url: str | None) -> None:
        """Delete a cart if there is one (a cart already gone is fine)."""
        if cart_url:
            self.session.delete(cart_url)


def ensure_release_venv(path: Path) -> Path:
    """Create ``path`` with the release installed, unless already done; return its ``python``."""
    python = path / "bin" / "python"
    marker = path / "bench-release.txt"
    if python.exists() and marker.exists() and marker.read_text() == RELEASE_REQUIREMENT:
        return python
    print(f"bench: installing {RELEASE_REQUIREMENT} into {path}", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", RELEASE_REQUIREMENT], check=True
    )
    marker.write_text(RELEASE_REQUIREMENT)
    return python
