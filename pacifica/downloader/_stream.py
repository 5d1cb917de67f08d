"""The cart's bytes as one forward-only file, whatever happens to the connection.

:class:`CartStream` reads the tar from Cartd and gives the tar reader a
plain ``read``/``tell``/forward-``seek`` file.  It watches every read: a
stream that stalls or trickles fails after ``Timeouts.stall``, the caller's
deadline is enforced between reads, and a connection that breaks is resumed
with a ``Range`` request from the last byte received when the server
supports ranges (Cartd's bundled carts); otherwise :class:`StreamBroken`
tells the caller to start over.  Each resume is a try spent from the
download's :class:`RetryBudget`, and bytes never received before give the
tries back.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import Callable

import requests
import urllib3

from ._config import Timeouts
from ._exceptions import CartTimeoutError, StreamBroken, TransferError, UnsafeArchiveError
from ._redaction import quote_known
from ._retry import RetryBudget
from ._transport import RETRYABLE_ERRORS

LOGGER = logging.getLogger(__name__)

#: Bytes asked of the socket per read: large reads keep the per-call cost low.
READ_SIZE = 1024 * 1024
#: No honest tar read is larger: data is read in READ_SIZE pieces, headers are
#: small.  A larger one is a hostile header (a giant pax record) and is refused.
MAX_READ = 16 * 1024 * 1024
#: New stream bytes that count as progress: a stream must bring this many within ``Timeouts.stall`` or be
#: resumed, and each such piece counts against ``Timeouts.progress``.  Not a setting: 64 KiB is a sliver of a
#: second on any live link, and far more than a trickle meant to keep a socket alive sends in 30 s.
PROGRESS_BYTES = 64 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

#: Errors that mean the connection broke under a read.
BROKEN = RETRYABLE_ERRORS + (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


class CartStream:
    """A forward-only file over the cart's HTTP stream, resumed with ``Range`` when it breaks.

    ``reopen(offset)`` opens the stream again from ``offset`` (a ranged GET);
    ``budget`` is the download's retry budget, each resume a try spent from
    it, and ``name`` the stream's name in it (the cart's URL); ``deadline``
    is a :func:`time.monotonic` value the whole read must finish by.
    """

    def __init__(
        self,
        response: requests.Response,
        reopen: Callable[[int], requests.Response],
        timeouts: Timeouts,
        budget: RetryBudget,
        name: str = "",
        deadline: float | None = None,
    ) -> None:
        """Read ``response``'s body; see the class docstring for the rest."""
        self._response = response
        self._reopen = reopen
        self._timeouts = timeouts
        self._budget = budget
        self._name = name
        self._deadline = deadline
        self._position = 0
        self._buffer = b""
        self._view = memoryview(self._buffer)
        self._offset = 0
        self._eof = False
        self._window_start = time.monotonic()
        self._window_bytes = 0
        self._resumable = response.headers.get("Accept-Ranges", "").lower() == "bytes" and bool(
            response.headers.get("Content-Length")
        )
        self._read1 = getattr(response.raw, "read1", None)

    # -- the file interface the tar reader uses ----------------------------

    def tell(self) -> int:
        """Bytes handed out so far."""
        return self._position

    def seek(self, position: int, whence: int = 0) -> int:
        """Skip forward to ``position`` by reading; backward seeks are refused."""
        if whence != 0 or position < self._position:
            raise UnsafeArchiveError("the tar asked to seek backwards; the archive is malformed")
        if self._take_buffered(position - self._position) is None:  # padding beyond the current chunk
            for _ in self.pieces(position - self._position):
                pass  # skipped without copying
        return self._position

    def read(self, size: int = -1) -> bytes:
        """Return exactly ``size`` bytes, fewer only at the end of the stream."""
        if size is None or size < 0 or size > MAX_READ:
            raise UnsafeArchiveError(
                "the tar asked for a {} read; a header that large is refused".format(
                    "whole-stream" if size is None or size < 0 else f"{size} byte"
                )
            )
        start = self._take_buffered(size)
        if start is not None:  # the common case: a header inside the current chunk
            return self._buffer[start : start + size]
        parts = list(self.pieces(size))
        return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)

    def _take_buffered(self, size: int) -> int | None:
        """Hand out ``size`` bytes of the current chunk if it holds them; return where they start in it."""
        start = self._offset
        if len(self._buffer) - start < size:
            return None
        self._offset = start + size
        self._position += size
        return start

    def pieces(self, size: int) -> Iterator[memoryview]:
        """Yield the next ``size`` bytes as they arrive, as views of the received chunks (no copy).

        Fewer bytes come only at the end of the stream; the caller counts
        them.  Each view is valid until the next one is asked for.
        """
        wanted = size
        while wanted > 0:
            left = len(self._buffer) - self._offset
            if not left:
                if self._eof:
                    return
                chunk = self._next_chunk(READ_SIZE)
                if not chunk:
                    self._eof = True
                    return
                self._buffer, self._view, self._offset = chunk, memoryview(chunk), 0
                left = len(chunk)
            take = min(wanted, left)
            piece = self._view[self._offset : self._offset + take]
            self._offset += take
            self._position += take  # counted as handed out: a resume asks for the first byte not yet received
            wanted -= take
            yield piece

    def close(self) -> None:
        """Close the underlying connection."""
        self._response.close()

    # -- watching the connection ----------------------------------------

    def _received(self) -> int:
        return self._position + len(self._buffer) - self._offset

    def _next_chunk(self, size: int) -> bytes:
        while True:
            self._check_time()
            try:
                if self._read1 is not None:
                    chunk: bytes = self._read1(min(size, READ_SIZE))
                else:
                    chunk = self._response.raw.read(min(size, READ_SIZE))
            except BROKEN as err:  # its text may quote the server (a chunk's length line): quoted safely
                reason = f"{type(err).__name__}: {quote_known(err)}"
            else:
                self._count(len(chunk))
                return chunk
            self._resume(reason)  # outside the except clause: the error, server text and all, is not chained

    def _count(self, nbytes: int) -> None:
        self._window_bytes += nbytes
        if self._window_bytes >= PROGRESS_BYTES:
            self._window_start = time.monotonic()
            self._window_bytes = 0
            self._budget.reached(self._name, self._received(), PROGRESS_BYTES)

    def _check_time(self) -> None:
        now = time.monotonic()
        if self._deadline is not None and now > self._deadline:
            raise CartTimeoutError("the download did not finish before the deadline")
        if self._budget.out_of_patience():
            self._response.close()
            raise TransferError(
                f"the cart's stream stopped making progress at byte {self._received()} "
                f"({self._budget.why_spent()}); run again to fetch the rest",
                attempts=[*self._budget.history, f"stalled at byte {self._received()}"],
                cart_url=self._name or None,
            )
        if now - self._window_start > self._timeouts.stall:
            self._response.close()
            raise StreamBroken(
                f"stalled: fewer than {PROGRESS_BYTES} bytes in {self._timeouts.stall:.0f} s", self._received()
            )

    def _resume(self, reason: str) -> None:
        """Reopen the stream at the first byte not yet received, or raise StreamBroken."""
        self._response.close()
        offset = self._received()
        if not self._resumable:
            raise StreamBroken(reason, offset)
        delay = self._budget.spend(reason)
        if delay is None:
            raise TransferError(
                f"the cart's stream kept breaking, the last time at byte {offset} ({self._budget.why_spent()}); "
                "run again to fetch the rest",
                attempts=self._budget.history,
                cart_url=self._name or None,
            )
        LOGGER.warning(
            "cart stream broke at byte %d (%s); resuming with a range request in %.1f s", offset, reason, delay
        )
        time.sleep(delay)
        try:
            response = self._reopen(offset)
        except Exception as err:  # any failure to reopen ends in a restart
            raise StreamBroken(f"{reason}; resume failed: {quote_known(err)}", offset) from err
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        whole = offset == 0 and response.status_code == 200  # nothing received yet: the whole body will do
        if not whole and (response.status_code != 206 or not match or int(match.group(1)) != offset):
            response.close()
            raise StreamBroken(
                "{}; the server did not resume at byte {} (HTTP {} {})".format(
                    reason, offset, response.status_code, quote_known(repr(response.headers.get("Content-Range")))
                ),
                offset,
            )
        self._response = response
        self._read1 = getattr(response.raw, "read1", None)
        self._window_start = time.monotonic()
        self._window_bytes = 0
