"""The one way the tests run a child process: its environment, on a pseudo-terminal, or with its peak memory."""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = ["REPO_ROOT", "run_measured", "run_on_pty", "subprocess_env"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment without the library's settings and proxies, the checkout importable, and ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PACIFICA_DOWNLOADER_", "CARTD_")) and not key.lower().endswith("_proxy")
    }
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("COLUMNS", None)
    env.update(extra)
    return env


def run_on_pty(argv: list[str], env: dict[str, str], limit: float = 60.0, sized: bool = True) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a new pseudo-terminal; return its status and output."""
    master, slave = os.openpty()
    if sized:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + limit
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                proc.kill()
                pytest.fail("the command did not finish in {} s; output so far: {!r}".format(limit, b"".join(chunks)))
            ready, _, _ = select.select([master], [], [], remaining)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError as err:
                if err.errno == errno.EIO:  # every slave end is closed: the process is gone
                    break
                raise
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=limit), b"".join(chunks).decode("utf-8", "replace")


def run_measured(
    argv: list[str], stdin: bytes, env: dict[str, str], limit: float = 120.0, **popen: Any
) -> tuple[int, bytes, int]:
    """Run ``argv`` with ``stdin``; return its exit status, its stdout and its peak RSS in bytes (``os.wait4``)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, **popen)
    try:
        out = _feed(proc, stdin, limit)
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, out, usage.ru_maxrss * 1024  # Linux counts ru_maxrss in KiB


def _feed(proc: subprocess.Popen[bytes], stdin: bytes, limit: float) -> bytes:
    """Write ``stdin`` and read stdout to its end (the child's exit), without reaping the child."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    chunks = []
    deadline = time.monotonic() + limit
    while True:
        if time.monotonic() > deadline:
            pytest.fail(f"the child did not finish in {limit} s")
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            chunks.append(data)
    proc.stdout.close()
    return b"".join(chunks)
