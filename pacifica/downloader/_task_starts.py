"""How often one queued download has been started in a location, so that a task that kills its worker ends.

A download task is acknowledged only once it ends, and requeued when the
worker running it dies (see :mod:`.tasks`): a worker killed for memory, a
host that reboots.  A task that itself kills its worker every time would
be requeued for ever, so each start is written down where every worker of
the location sees it, the location's hidden folder
(``.pacifica-downloader/tasks/<task id>-<retry>``), and the start after
``limit`` starts that did not end raises :class:`RedeliveryError`.  A task
that ends (done, failed or retried later) removes its file.

Needs no Celery: the task passes its id and retry number.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from pathlib import Path

from ._exceptions import DownloaderError
from ._permissions import FOLDER_MODE, open_append

LOGGER = logging.getLogger(__name__)

#: The folder of the start records, inside the location's hidden folder.
STARTS_DIR = "tasks"


class RedeliveryError(DownloaderError):
    """A queued download was started ``limit`` times and its worker died each time; it is not started again."""


class TaskStarts:
    """The starts of one task (``task_id``, its ``retries``-th retry) in ``hidden``, the location's hidden folder.

    >>> starts = TaskStarts(hidden, request.id, request.retries)   # doctest: +SKIP
    >>> starts.start(limit=3); ...; starts.finish()                # doctest: +SKIP
    """

    def __init__(self, hidden: Path, task_id: str, retries: int = 0) -> None:
        """Keep the starts of this task in ``hidden/tasks``."""
        self.task_id = task_id
        name = re.sub(r"[^\w.-]", "_", task_id)[:200] or "task"
        self.path = hidden / STARTS_DIR / f"{name}-{int(retries)}"

    def start(self, limit: int) -> int:
        """Write this start down; return how many starts there have been, or raise :class:`RedeliveryError`.

        Raised when ``limit`` starts came before this one and none ended:
        each of their workers died.  The record is then removed, so enqueuing
        the same download again starts afresh.  A record that cannot be
        written is logged and the start allowed: it bounds crashes, and must
        not itself stop downloads.
        """
        line = f"{socket.gethostname()} {os.getpid()} {time.time():.3f}\n"
        try:
            self.path.parent.mkdir(mode=FOLDER_MODE, exist_ok=True)
            with open_append(self.path) as record:
                record.write(line)
                record.flush()
                os.fsync(record.fileno())  # the worker may die the next moment: that is what is counted
            starts = len(self.path.read_text(encoding="utf-8").splitlines())
        except OSError as err:
            LOGGER.warning("could not record the start of task %s in %s: %s", self.task_id, self.path, err)
            return 1
        if starts > limit:
            self.finish()
            raise RedeliveryError(
                f"task {self.task_id} was started {starts - 1} times and the worker running it died each time "
                f"(killed, out of memory, or a crash); it is not started again: look in the workers' logs, "
                f"then enqueue the download again"
            )
        if starts > 1:
            LOGGER.warning(
                "task %s started again after its worker died (start %d of at most %d)", self.task_id, starts, limit
            )
        return starts

    def finish(self) -> None:
        """The task ended (done, failed, or retried as a new message): forget its starts."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass  # ended already (finish() runs on every way out)
        except OSError as err:
            LOGGER.debug("could not remove %s: %s", self.path, err)
