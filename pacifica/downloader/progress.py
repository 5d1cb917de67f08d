"""Progress reports: what a download is doing, for bars, spinners and service logs.

A download calls its ``progress`` callback with a :class:`Progress` value at
each step: ``validating`` (input checked), ``staging`` (each poll while the
server prepares the cart), ``transferring`` (each piece of data received),
``verifying`` (each file checked and placed) and ``done``.  The callback
runs in the downloading thread: keep it quick, and let it raise nothing.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

__all__ = ["PHASES", "Progress", "ProgressCallback"]

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

    @property
    def fraction(self) -> float | None:
        """Share of the bytes done, when the total is known."""
        if not self.bytes_total:
            return None
        return self.bytes_done / self.bytes_total


ProgressCallback = Callable[[Progress], None]
