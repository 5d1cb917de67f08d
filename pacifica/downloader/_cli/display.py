"""Progress display for the command line, built on the library's ``progress`` callback.

:func:`make_display` returns a callable to pass as ``Downloader(...,
progress=...)``, or None when nothing should be shown (``--quiet``, or
standard error is not a terminal: pipes, files, CI logs stay clean).

* With ``tqdm`` installed (the ``progress`` extra), a spinner with the
  elapsed time while the cart stages, then a byte bar with unit scaling and
  the file count (``files 3/10``) while the cart transfers.
* Without it, plain lines, at most about one a second:
  ``staging... 3.2 s`` and ``12.5 MB of 40.0 MB, 3/10 files``.

Both display only; they never raise into the download (see
:class:`SafeDisplay`).  :meth:`Display.write` prints a line (a log record,
a warning) without garbling a bar being drawn.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
from typing import Any, TextIO

from .._progress import Progress

LOGGER = logging.getLogger(__name__)

#: Plain lines are printed at most this often (seconds), except on a change of stage.
LINE_INTERVAL = 1.0
#: The columns and rows assumed on a terminal that reports no size.
DEFAULT_SHAPE = (80, 24)
#: tqdm's default bar, with the unit after both counts: ``12.5MB/40.0MB``.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
#: The spinner's frames: plain ASCII, so any terminal shows them.
SPINNER = "|/-\\"


def format_size(count: float | None) -> str:
    """Return a byte count in decimal units, as tqdm shows them.

    >>> format_size(0), format_size(999), format_size(12_500_000), format_size(3 * 10**9)
    ('0 B', '999 B', '12.5 MB', '3.0 GB')
    """
    if count is None:
        return "?"
    value = float(count)
    if value < 1000:
        return f"{int(value):d} B"
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        value /= 1000.0
        if value < 1000 or unit == "PB":
            break
    return f"{value:.1f} {unit}"


def terminal_shape(stream: TextIO) -> dict[str, int | None]:
    """tqdm's ``ncols`` and ``nrows`` for ``stream``: None to let tqdm ask, a default when the terminal reports none.

    A pseudo-terminal nobody sized (``script`` without a terminal, some
    containers) reports 0 columns and 0 rows, and tqdm then draws nothing.
    """
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return {"ncols": None, "nrows": None}
    return {
        "ncols": None if size.columns > 0 else DEFAULT_SHAPE[0],
        "nrows": None if size.lines > 0 else DEFAULT_SHAPE[1],
    }


def stage_of(phase: str) -> str:
    """Map a :class:`Progress` phase to what the display shows: ``staging``, ``transfer`` or the phase itself."""
    if phase in ("transferring", "verifying"):
        return "transfer"
    return phase


def transfer_text(progress: Progress) -> str:
    """``12.5 MB of 40.0 MB, 3/10 files`` (or without ``of ...`` when the sizes are unknown)."""
    done = format_size(progress.bytes_done)
    if progress.bytes_total is not None:
        done = f"{done} of {format_size(progress.bytes_total)}"
    return f"{done}, {progress.files_done}/{progress.files_total} files"


class Display:
    """A progress callback that draws on a terminal stream; subclasses decide how."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.stage = ""
        self.staging_started = 0.0

    def __call__(self, progress: Progress) -> None:
        """Show ``progress``."""
        raise NotImplementedError

    def write(self, text: str) -> None:
        """Print one line of text (a log message) without garbling what is drawn."""
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Finish drawing; called once, when the download ends however it ends."""


class LineDisplay(Display):
    """Plain lines, for terminals when tqdm is not installed: at most one per ``interval`` seconds.

    The clock is :attr:`Progress.elapsed`, so the display needs no timer of its own.
    """

    def __init__(self, stream: TextIO, interval: float = LINE_INTERVAL) -> None:
        super().__init__(stream)
        self.interval = interval
        self.last_time: float | None = None
        self.last_line = ""

    def __call__(self, progress: Progress) -> None:
        stage = stage_of(progress.phase)
        if stage == "validating":
            return
        if stage == "done":
            if self.stage == "transfer":
                self._line(transfer_text(progress), progress.elapsed, force=True)
            self.stage = stage
            return
        changed = stage != self.stage
        if changed and stage == "staging":
            self.staging_started = progress.elapsed
        self.stage = stage
        if stage == "staging":
            text = f"staging... {progress.elapsed - self.staging_started:.1f} s{spares_note(progress)}"
        else:
            text = transfer_text(progress)
        self._line(text, progress.elapsed, force=changed)

    def _line(self, text: str, now: float, force: bool) -> None:
        if text == self.last_line:
            return
        if not force and self.last_time is not None and now - self.last_time < self.interval:
            return
        self.last_time = now
        self.last_line = text
        self.write(text)


def spares_note(progress: Progress) -> str:
    """`` (1 spare cart posted)`` once a cart that seemed lost got a spare, else nothing."""
    return f" ({progress.spares} spare cart{'s' if progress.spares > 1 else ''} posted)" if progress.spares else ""


class TqdmDisplay(Display):
    """A tqdm spinner while the cart stages, then a tqdm byte bar with the file count."""

    def __init__(self, stream: TextIO, tqdm_class: Any) -> None:
        super().__init__(stream)
        self.tqdm = tqdm_class
        self.spinner: Any = None
        self.bar: Any = None
        self.frame = 0
        self.files_shown = -1

    def __call__(self, progress: Progress) -> None:
        stage = stage_of(progress.phase)
        if stage == "staging":
            self._staging(progress)
        elif stage == "transfer":
            self._transfer(progress)
        elif stage == "done":
            if self.bar is not None:
                self._transfer(progress)
            self.close()
        self.stage = stage

    def _staging(self, progress: Progress) -> None:
        if self.spinner is None:
            self.staging_started = progress.elapsed
            self.spinner = self.tqdm(
                total=None,
                file=self.stream,
                bar_format="{desc}",
                leave=False,
                disable=False,
                mininterval=0,
                **terminal_shape(self.stream),
            )
        self.frame = (self.frame + 1) % len(SPINNER)
        self.spinner.set_description_str(
            f"{SPINNER[self.frame]} staging cart... {progress.elapsed - self.staging_started:.1f} s"
            f"{spares_note(progress)}",
            refresh=True,
        )

    def _transfer(self, progress: Progress) -> None:
        if self.bar is None:
            self._close_spinner()
            self.bar = self.tqdm(
                total=progress.bytes_total,
                unit="B",
                unit_scale=True,
                unit_divisor=1000,
                desc="downloading",
                file=self.stream,
                leave=True,
                disable=False,
                bar_format=None if progress.bytes_total is None else BAR_FORMAT,
                **terminal_shape(self.stream),
            )
        if progress.files_done != self.files_shown:
            self.files_shown = progress.files_done
            self.bar.set_postfix_str(f"files {progress.files_done}/{progress.files_total}", refresh=False)
        step = progress.bytes_done - self.bar.n
        if step > 0:
            self.bar.update(step)
        elif progress.files_done == progress.files_total:
            self.bar.refresh()

    def _close_spinner(self) -> None:
        if self.spinner is not None:
            self.spinner.close()
            self.spinner = None

    def write(self, text: str) -> None:
        self.tqdm.write(text, file=self.stream)

    def close(self) -> None:
        self._close_spinner()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class SafeDisplay:
    """Wraps a :class:`Display` so that a drawing failure never breaks the download.

    After the first failure the display is switched off (logged at DEBUG).
    """

    def __init__(self, display: Display) -> None:
        self.display: Display | None = display

    def __call__(self, progress: Progress) -> None:
        if self.display is None:
            return
        try:
            self.display(progress)
        except Exception:  # a display must never fail a download
            LOGGER.debug("progress display failed; switching it off", exc_info=True)
            self.display = None

    def write(self, text: str) -> bool:
        """Print a line through the display; return False (printing nothing) when the display is off."""
        if self.display is None:
            return False
        try:
            self.display.write(text)
        except Exception:
            LOGGER.debug("progress display failed; switching it off", exc_info=True)
            self.display = None
            return False
        return True

    def close(self) -> None:
        """Finish drawing (idempotent)."""
        display, self.display = self.display, None
        if display is not None:
            try:
                display.close()
            except Exception:
                LOGGER.debug("closing the progress display failed", exc_info=True)


def _tqdm_class() -> Any | None:
    """Return ``tqdm.tqdm`` if the optional ``tqdm`` package is installed (the ``progress`` extra)."""
    try:
        module = importlib.import_module("tqdm")
    except ImportError:
        return None
    return getattr(module, "tqdm", None)


def make_display(
    stream: TextIO, *, quiet: bool = False, tqdm_class: Any | None = None, use_tqdm: bool | None = None
) -> SafeDisplay | None:
    """Return the progress callback for ``stream``, or None when nothing should be shown.

    Nothing is shown under ``quiet`` or when ``stream`` is not a terminal.
    ``use_tqdm`` None means: tqdm when it is installed, plain lines otherwise.
    """
    if quiet:
        return None
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):  # closed or not a real stream
        return None
    if use_tqdm is not False:
        tqdm_class = tqdm_class or _tqdm_class()
        if tqdm_class is not None:
            return SafeDisplay(TqdmDisplay(stream, tqdm_class))
    return SafeDisplay(LineDisplay(stream))
