"""Progress reports: what a download is doing, for bars, spinners and service logs.

A download calls its ``progress`` callback with a :class:`Progress` value at
each step: ``validating`` (input checked), ``staging`` (each poll while the
server prepares the cart), ``transferring`` (each piece of data received),
``verifying`` (each file checked and placed) and ``done``.  The callback
runs in the downloading thread: keep it quick, and let it raise nothing.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable

from ._records import total_size

PHASES = ("validating", "staging", "transferring", "verifying", "done")


@dataclasses.dataclass(frozen=True)
class Progress:
    """One progress report.

    ``files_total`` and ``bytes_total`` count what this call fetches (files
    already present are not counted); ``bytes_total`` is None when the
    event gave no sizes.  ``elapsed`` is seconds since the call started.

    >>> Progress("transferring", files_done=1, files_total=3, bytes_done=10, bytes_total=30).fraction
    0.3333333333333333
    """

    phase: str
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int | None = None
    elapsed: float = 0.0
    cart_url: str | None = None
    #: Spare carts this call posted because Cartd seemed to have lost a cart (see ``LostCarts``).
    spares: int = 0

    @property
    def fraction(self) -> float | None:
        """Share of the bytes done, when the total is known."""
        if not self.bytes_total:
            return None
        return self.bytes_done / self.bytes_total


ProgressCallback = Callable[[Progress], None]


class Tracker:
    """Counts the files and bytes of one download call and hands :class:`Progress` values to the callback.

    Thread-safe: the carts of a large download report from several threads.
    """

    def __init__(self, callback: ProgressCallback | None, records: Sequence[Any]) -> None:
        """Track ``records`` (anything with a ``size``, None when unknown)."""
        self.callback = callback
        self.files_total = len(records)
        self.bytes_total = total_size(records)
        self.files_done = 0
        self.bytes_done = 0
        self.cart_url: str | None = None
        self.spares = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, phase: str) -> None:
        """Report ``phase`` with the current counts."""
        if self.callback is None:
            return
        with self._lock:
            report = Progress(
                phase=phase,
                files_done=self.files_done,
                files_total=self.files_total,
                bytes_done=self.bytes_done,
                bytes_total=self.bytes_total,
                elapsed=time.monotonic() - self.started,
                cart_url=self.cart_url,
                spares=self.spares,
            )
        self.callback(report)

    def cart_created(self, cart_url: str) -> None:
        """A cart was posted: report ``staging``."""
        self.cart_url = cart_url
        self("staging")

    def spare_posted(self) -> None:
        """A spare of a cart that seemed lost was posted: report ``staging`` with one more spare."""
        with self._lock:
            self.spares += 1
        self("staging")

    def add_bytes(self, count: int) -> None:
        """``count`` more bytes arrived."""
        with self._lock:
            self.bytes_done += count
        self("transferring")

    def file_placed(self) -> None:
        """One more file was verified and moved into place."""
        with self._lock:
            self.files_done += 1
        self("verifying")
