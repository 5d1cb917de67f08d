"""Run one download in a child process, for tests that kill it or run it as another user.

Used by ``test_destination.py`` and ``test_rerun_after_kill.py``; not a test
itself.  The job is one JSON object on stdin::

    {"location": DIR, "cart_url": URL, "event": {...}, "pause_mid_file": false}

The child writes JSON lines to stdout:

* with ``pause_mid_file``, once at least one file is verified and placed and
  the next file's first bytes are in the incoming area:
  ``{"paused": {"pid": ..., "cart_url": ..., "files_done": ...}}``; it then
  blocks for ever (the parent kills it), so the parent needs no sleep;
* otherwise, at the end: ``{"result": [paths]}`` or ``{"error": {"type",
  "errno", "path", "message"}}``, with ``"sent"``: every request as
  ``[method, url]``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Run by path, Python puts the script's own folder (tests/support) first on sys.path; tests/ goes there instead,
    # so that the support package is imported under the name the tests give it.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from pacifica.downloader import DestinationError, Downloader, DownloaderError, Progress
from support.sessions import RecordingSession


def _say(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    job = json.load(sys.stdin)
    session = RecordingSession()
    pause = bool(job.get("pause_mid_file"))

    def progress(report: Progress) -> None:
        if pause and report.phase == "transferring" and report.files_done >= 1:
            _say({"paused": {"pid": os.getpid(), "cart_url": report.cart_url, "files_done": report.files_done}})
            threading.Event().wait()  # blocks until the parent's SIGKILL

    down = Downloader(job["location"], job["cart_url"], session=session, progress=progress)
    try:
        paths = down.cloudevent(job["event"], deadline=job.get("deadline", 60))
    except DownloaderError as err:
        _say(
            {
                "error": {
                    "type": type(err).__name__,
                    "errno": getattr(err, "errno", None) if isinstance(err, DestinationError) else None,
                    "path": getattr(err, "path", None),
                    "message": str(err),
                },
                "sent": session.sent,
            }
        )
        return 1
    _say({"result": paths, "sent": session.sent})
    return 0


if __name__ == "__main__":
    sys.exit(main())
