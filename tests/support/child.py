"""A download run in a child process and SIGKILLed mid-stream (no cleanup runs), for the tests that run it again.

The child (``tests/support/download_child.py``), once its first file is verified and
placed and the next one has started streaming into the incoming area, tells
the parent through its stdout pipe and blocks; :func:`run_and_kill` then
SIGKILLs it.  No sleep is involved: the parent waits on the pipe, the child
on an event nobody sets.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = ["CHILD", "file_ids", "run_and_kill"]

HERE = Path(__file__).resolve().parent
#: The child's script, run by path (see its module for how it finds the support package).
CHILD = HERE / "download_child.py"
#: Bound on waiting for the child to reach the middle of the stream (cart staging included).
CHILD_WAIT = 120.0


def file_ids(event: dict[str, Any]) -> dict[str, str]:
    """``{relative path: archive id}`` of the event's files."""
    return {
        "{}/{}".format(obj["subdir"], obj["name"]).lstrip("/"): str(obj["_id"])
        for obj in event["data"]
        if obj.get("destinationTable") == "Files"
    }


def read_line(proc: subprocess.Popen[bytes], limit: float) -> bytes | None:
    """The child's next stdout line, waiting at most ``limit`` seconds; None on EOF or timeout."""
    assert proc.stdout is not None
    end = time.monotonic() + limit
    buffer = b""
    fd = proc.stdout.fileno()
    while not buffer.endswith(b"\n"):
        left = end - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buffer += chunk
    return buffer


def run_and_kill(location: Path, cart_url: str, event: dict[str, Any]) -> dict[str, Any]:
    """Start the download in a child, wait until it is mid-stream, SIGKILL it; return its 'paused' report."""
    env = dict(os.environ, PYTHONPATH=str(HERE.parents[1]))
    job = json.dumps({"location": str(location), "cart_url": cart_url, "event": event, "pause_mid_file": True})
    proc = subprocess.Popen(
        [sys.executable, str(CHILD)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=str(location.parent),
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(job.encode())
        proc.stdin.close()
        line = read_line(proc, CHILD_WAIT)
        if line is None:
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail("the child never reached the middle of the stream:\n{}".format(err.decode(errors="replace")))
        report: dict[str, Any] = json.loads(line)
        assert "paused" in report, report
        assert report["paused"]["pid"] == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL  # reaped: its pid is gone
        return report["paused"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
