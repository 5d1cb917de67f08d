"""What the command prints: the exit status, progress and logs on stderr, the summary and the manifest.

Everything goes to stderr but the ``--json`` manifest, which alone goes to
stdout, so a pipe receives only the manifest.  Every line on stderr (errors,
tracebacks, log records) is scrubbed of the credentials the run knows and
has its control characters escaped (:func:`shown`): the library already
quotes server text so, and this is the last line of defence, so that no
escape sequence from a server reaches the terminal.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from collections.abc import Sequence
from typing import Any, TextIO

import requests

from .._exceptions import (
    CartError,
    CartFailedError,
    CartTimeoutError,
    DestinationError,
    DownloaderError,
    IntegrityError,
    InvalidInputError,
    TransferError,
    UnsafeArchiveError,
)
from .._progress import Progress
from .._records import FileRecord
from .._redaction import Secrets, escape_controls, redact, scrub_known
from .display import SafeDisplay, format_size

PROG = "pacifica-downloader"
#: The logger the command configures (``-v``/``-vv``); nothing else is touched.
LIBRARY_LOGGER = "pacifica.downloader"

# -- exit codes -------------------------------------------------------------------

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_SERVER = 3
EXIT_INTEGRITY = 4
EXIT_TIMEOUT = 5
EXIT_DESTINATION = 6
EXIT_INTERRUPTED = 130

#: Every exit status of the command and what it means (also shown by ``--help``).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success: every file is on disk and verified",
    EXIT_INTERNAL: "unexpected internal error (a bug: please report it with the -vv output)",
    EXIT_USAGE: "bad input or usage: invalid arguments, an unreadable or invalid JSON file, "
    "an event or document that cannot be downloaded",
    EXIT_SERVER: "server, cart or transfer error: the cart or policy service refused or failed, "
    "or the network gave out",
    EXIT_INTEGRITY: "integrity error: a file did not match its hash, the cart held other files "
    "than requested, or the archive was unsafe",
    EXIT_TIMEOUT: "timeout: the cart was not ready in time (see --timeout)",
    EXIT_DESTINATION: "destination error: the download directory cannot take the files "
    "(permissions, disk full, a differing file with --no-overwrite)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C): the cart is deleted (unless --keep-cart) and no partial file is left",
}

#: Error messages list at most this many detail lines unless ``-v`` is given.
DETAIL_LINES = 10


def exit_code_for(error: BaseException) -> int:
    """Return the exit status documented for ``error`` (see :data:`EXIT_CODES`)."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, InvalidInputError):
        return EXIT_USAGE
    if isinstance(error, CartTimeoutError):
        return EXIT_TIMEOUT
    if isinstance(error, (IntegrityError, UnsafeArchiveError)):
        return EXIT_INTEGRITY
    if isinstance(error, DestinationError):
        return EXIT_DESTINATION
    if isinstance(error, (CartError, TransferError, DownloaderError, requests.RequestException)):
        return EXIT_SERVER
    return EXIT_INTERNAL


# -- output ---------------------------------------------------------------------


def shown(text: str) -> str:
    """``text`` as it may reach a terminal: without any credential a live transport holds, control characters
    (but newlines and tabs) escaped."""
    return escape_controls(scrub_known(text))


class _LevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.levelname_lower = record.levelname.lower()
        return super().format(record)


class _DisplayHandler(logging.Handler):
    """Writes log records to stderr, through the progress display when one is drawing."""

    def __init__(self, stream: TextIO, display: SafeDisplay | None) -> None:
        super().__init__()
        self.stream = stream
        self.display = display

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = shown(self.format(record))
            if self.display is None or not self.display.write(text):
                self.stream.write(text + "\n")
                self.stream.flush()
        except Exception:  # noqa: BLE001 - logging.Handler's contract: report, never raise
            self.handleError(record)


class ProgressFeed:
    """The progress callback: remembers the last report and passes it on to the display.

    (The command's end of :class:`~pacifica.downloader._progress.Tracker`, which sends the reports.)
    """

    def __init__(self, display: SafeDisplay | None) -> None:
        self.display = display
        self.last: Progress | None = None
        self.cart_url: str | None = None

    def __call__(self, progress: Progress) -> None:
        self.last = progress
        if progress.cart_url:
            self.cart_url = progress.cart_url
        if self.display is not None:
            self.display(progress)


class Output:
    """Everything the command prints besides logs, in one place."""

    def __init__(self, stdout: TextIO, stderr: TextIO, display: SafeDisplay | None) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.display = display
        self.secrets: Secrets | None = None

    def keep(self, secrets: Secrets) -> None:
        """Keep the run's ``secrets`` alive until the command ends, so that everything printed is scrubbed of them."""
        self.secrets = secrets

    def close_display(self) -> None:
        if self.display is not None:
            self.display.close()

    def message(self, text: str) -> None:
        self.close_display()
        self.stderr.write(shown(f"{PROG}: {text}\n"))
        self.stderr.flush()

    def error(self, error: BaseException, verbose: int) -> None:
        self.close_display()
        if verbose >= 2:
            self.stderr.write(shown("".join(traceback.format_exception(type(error), error, error.__traceback__))))
        text = shown(str(error)) if str(error) else type(error).__name__
        if not isinstance(error, DownloaderError):
            text = f"{type(error).__name__}: {text}"
        lines = text.splitlines() or [text]
        if isinstance(error, CartFailedError) and verbose >= 1 and error.server_message:
            lines.append("  server message: " + shown(error.server_message))
        detail = lines[1:]
        if verbose < 1 and len(detail) > DETAIL_LINES:
            more = len(detail) - DETAIL_LINES
            detail = detail[:DETAIL_LINES] + [f"  ... and {more} more (-v shows all)"]
        self.stderr.write(f"{PROG}: error: {lines[0]}\n")
        for line in detail:
            self.stderr.write(line + "\n")
        self.stderr.flush()

    def json(self, data: Any) -> None:
        self.line(json.dumps(data, indent=2))

    def line(self, text: str) -> None:
        """Write ``text`` and a newline to stdout (the manifest, a task id): what a pipe receives."""
        try:
            self.stdout.write(text + "\n")
            self.stdout.flush()
        except BrokenPipeError:
            # The reader went away (``| head``); what was done is done all the same.
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass


def setup_logging(verbose: int, quiet: bool, stream: TextIO, display: SafeDisplay | None) -> Any:
    """Send the library's log records to ``stream``; return what :func:`restore_logging` needs."""
    logger = logging.getLogger(LIBRARY_LOGGER)
    saved = (logger.level, logger.propagate)
    if quiet:
        level = logging.ERROR
    elif verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = logging.INFO
    else:
        level = logging.WARNING
    handler = _DisplayHandler(stream, display)
    if verbose >= 2:
        fmt = f"{PROG}: %(asctime)s %(levelname_lower)s %(name)s: %(message)s"
    else:
        fmt = f"{PROG}: %(levelname_lower)s: %(message)s"
    handler.setFormatter(_LevelFormatter(fmt))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger, handler, saved


def restore_logging(state: Any) -> None:
    logger, handler, (level, propagate) = state
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


def summary(
    paths: Sequence[str],
    records: Sequence[FileRecord],
    entries: list[dict[str, Any]] | None,
    feed: ProgressFeed,
    elapsed: float,
    destination: str,
    keep_cart: bool,
) -> str:
    if not records:
        return "the input lists no files; nothing to download"
    sizes = [entry["size"] for entry in entries] if entries is not None else [os.stat(path).st_size for path in paths]
    fetched = feed.last.files_total if feed.last is not None else 0
    text = "{} file{} ({}) in {:.1f} s to {}".format(
        len(paths), "" if len(paths) == 1 else "s", format_size(sum(sizes)), elapsed, destination
    )
    present = len(paths) - fetched
    if present:
        text += " ({} already present{})".format(present, "" if fetched else ", no cart needed")
    if keep_cart and feed.cart_url:
        text += f"; cart kept at {redact(feed.cart_url)}"
    return text
