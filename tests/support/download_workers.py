"""Real download workers (``celery -A pacifica.downloader.tasks worker``) on the test stack's Redis.

Each worker is a process of its own, with its own node name, consuming a
queue of its own test module on Redis database 1 (Cartd's workers use
database 0).  The client side is an app made by ``make_app`` from the same
environment, as a user's enqueuing program would make it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pacifica.downloader.tasks import make_app
from support.cartd_stack import _Service

#: Seconds a worker has to say it is ready.
READY_WITHIN = 60.0
_READY = re.compile(r"\bready\.")


class DownloadWorkers:
    """Start, kill and read the logs of download workers; ``app`` enqueues to them."""

    def __init__(self, stack: Any, workdir: Path, **environ: str) -> None:
        """Workers for ``stack``'s Cartd, logging into ``workdir``; ``environ`` adds to their environment."""
        self.workdir = workdir
        self.queue = f"test-downloads-{uuid.uuid4().hex[:8]}"
        broker = f"redis://127.0.0.1:{stack.redis_port}/1"
        self.env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
        self.env.update(
            {
                "BROKER_URL": broker,
                "BACKEND_URL": broker,
                "DOWNLOADER_QUEUE": self.queue,
                "CARTD_CART_API_URL": stack.cart_url,
                "DOWNLOADER_RETRY_BACKOFF": "0.05",
                "DOWNLOADER_MAX_RETRIES": "2",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.update(environ)
        self.app = make_app(self.env)
        self.workers: dict[str, _Service] = {}

    def start(self, node: str, concurrency: int = 1) -> None:
        """Start worker ``node`` (a prefork pool of ``concurrency`` children) and wait until it is ready."""
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "pacifica.downloader.tasks",
            "worker",
            "-n",
            f"{node}@%h",
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        service = _Service(node, argv, self.env, self.workdir / f"{node}.log")
        service.start(self.workdir)
        self.workers[node] = service
        deadline = time.monotonic() + READY_WITHIN
        while not _READY.search(service.new_output()):
            if not service.running() or time.monotonic() > deadline:
                raise RuntimeError(f"download worker {node} did not start:\n{service.new_output()[-3000:]}")
            time.sleep(0.05)  # polling a log for a condition, not waiting for time to pass

    def log(self, node: str) -> str:
        """What worker ``node`` logged since it started."""
        return self.workers[node].new_output()

    def logs(self) -> str:
        """Every worker's log, each under a header."""
        return "\n".join(f"----- {node} -----\n{service.new_output()}" for node, service in self.workers.items())

    def count(self, pattern: str) -> int:
        """How often ``pattern`` occurs in the workers' logs, all together."""
        return sum(len(re.findall(pattern, service.new_output())) for service in self.workers.values())

    def stop(self) -> None:
        """Stop every worker (warm shutdown, then SIGKILL for those still there after 20 s)."""
        for service in self.workers.values():
            service.request_stop()
        for service in self.workers.values():
            if service.proc is None:
                continue
            try:
                service.proc.wait(20)
            except subprocess.TimeoutExpired:
                service.signal_group(signal.SIGKILL)
                service.proc.wait(10)
            service.close_log()
        self.app.close()
