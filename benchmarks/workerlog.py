"""What Cartd's Celery worker did during a download, read from its log.

The stack's worker logs every task at INFO level, e.g. ``[2026-11-30
08:04:50,629: INFO/MainProcess] Task pacifica.cartd.tasks.pull_file[<id>]
succeeded in 0.0377s: None``.  On a stack with one solo worker the tasks
run one at a time, so the sum of their times over a download is the time
the server's staging needed no matter what the client did: a floor for
the download's end-to-end time, which splitting the event into carts can
lower (Cartd's cost per file grows with a cart's size) but no client can
go below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WorkerTime", "log_end", "worker_time"]

_TASK_DONE = re.compile(r"^\[[^\]]+: INFO/[^\]]+\] Task [\w.]+\[[^\]]+\] succeeded in (?P<seconds>[0-9.e-]+)s")


@dataclass(frozen=True)
class WorkerTime:
    """The tasks the worker finished in a time window, and the seconds it spent in them."""

    tasks: int
    busy: float


def log_end(log: Path) -> int:
    """The log's size now: where the lines of what happens next will start."""
    try:
        return log.stat().st_size
    except FileNotFoundError:
        return 0


def worker_time(log: Path, since: int) -> WorkerTime:
    """Sum the tasks logged as finished after offset ``since`` (from :func:`log_end`) of the worker's log."""
    tasks, busy = 0, 0.0
    try:
        with open(log, "rb") as handle:
            handle.seek(since)
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return WorkerTime(0, 0.0)
    for line in text.splitlines():
        match = _TASK_DONE.match(line)
        if match is not None:
            tasks += 1
            busy += float(match["seconds"])
    return WorkerTime(tasks, busy)
