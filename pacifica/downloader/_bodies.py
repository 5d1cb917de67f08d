"""An answer's body, read up to a cap whatever the server sends: no error page can take the memory.

Every request is sent with ``stream=True``, so requests reads no body by
itself.  :func:`read_body` reads one up to ``limit`` bytes *after*
decompression: it takes the raw bytes (``decode_content=False``) a piece at
a time and inflates ``gzip`` and ``deflate`` itself with
``zlib.decompressobj().decompress(data, max_length)``, so that a small
compressed body that inflates to gigabytes costs no more than ``limit``
(urllib3 1.26 and 2.x alike).  A body in another encoding (``br``,
``zstd``) is not read.  A body cut at the cap closes its connection; one
read to its end leaves the connection to be used again.

:func:`hold_body` keeps what was read as the response's ``raw`` file, so
``response.content``, ``.text`` and ``.json()`` give that capped body.
"""

from __future__ import annotations

import io
import zlib
from typing import Callable

import requests
import urllib3

#: Bytes of an answer's body read at most (after decompression) when only a message is wanted from it.
BODY_LIMIT = 64 * 1024
#: Raw bytes read per piece.
_PIECE = 16 * 1024
#: Raw bytes read at most per decoded byte allowed (plus one piece): compressed data that yields (almost)
#: nothing, such as a gzip header padded with megabytes of extra fields, is not read for ever.
_RAW_PER_BYTE = 4

#: Why reading a body may stop early: the connection broke or timed out, or the compressed data is corrupt.
_READ_ERRORS = (OSError, urllib3.exceptions.HTTPError, requests.exceptions.RequestException, zlib.error, ValueError)


def read_body(response: requests.Response, limit: int = BODY_LIMIT) -> tuple[bytes, bool]:
    """Read ``response``'s body, decompressed, up to ``limit`` bytes; return it and whether it is whole.

    A body longer than ``limit``, in an encoding not read here, or broken
    off comes back cut (``False``), its connection closed.
    """
    inflate = _inflater(response.headers.get("Content-Encoding", ""))
    if inflate is None:
        response.close()
        return b"", False
    out = bytearray()
    raw_left = _RAW_PER_BYTE * limit + _PIECE
    whole = False
    try:
        while len(out) <= limit:
            piece = response.raw.read(_PIECE, decode_content=False)
            if not piece:
                whole = True
                break
            raw_left -= len(piece)
            out += inflate(piece, limit + 1 - len(out))
            if raw_left < 0:
                break
    except _READ_ERRORS:
        whole = False
    if len(out) > limit:
        whole = False
        del out[limit:]
    if not whole:
        response.close()  # the rest of the body is unread: the connection cannot serve another request
    return bytes(out), whole


def hold_body(
    response: requests.Response, limit: int = BODY_LIMIT, cut: Callable[[bytes], bytes] | None = None
) -> bool:
    """Read the body as :func:`read_body` does and keep it as ``response.raw``; return whether it is whole.

    ``cut(data)`` trims a body that was cut short (:meth:`.redaction.Secrets.cut_tail`).
    """
    data, whole = read_body(response, limit)
    if not whole and cut is not None:
        data = cut(data)
    response.raw = io.BytesIO(data)
    return whole


def _inflater(encoding: str) -> Callable[[bytes, int], bytes] | None:
    """A function inflating the next raw piece into at most ``room`` bytes, for ``encoding`` (None: unknown)."""
    names = [name.strip().lower() for name in encoding.split(",") if name.strip()]
    names = [name for name in names if name != "identity"]
    if not names:
        return lambda piece, room: piece[:room]
    if len(names) > 1 or names[0] not in ("gzip", "x-gzip", "deflate"):
        return None
    return _Inflater(names[0] != "deflate").inflate


class _Inflater:
    """gzip (several members, as urllib3 reads them) or deflate (zlib-wrapped, or raw as some servers send it)."""

    def __init__(self, gzip: bool) -> None:
        self.gzip = gzip
        self.started = False
        self.decoder = self._new()

    def _new(self, raw_deflate: bool = False) -> zlib._Decompress:
        if self.gzip:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        return zlib.decompressobj(-zlib.MAX_WBITS if raw_deflate else zlib.MAX_WBITS)

    def inflate(self, piece: bytes, room: int) -> bytes:
        if not self.gzip and not self.started:
            self.started = True
            try:
                return self.decoder.decompress(piece, room)
            except zlib.error:  # deflate without its zlib wrapper
                self.decoder = self._new(raw_deflate=True)
        out = self.decoder.decompress(piece, room)
        while self.gzip and self.decoder.eof and self.decoder.unused_data and len(out) < room:
            rest = self.decoder.unused_data
            self.decoder = self._new()
            out += self.decoder.decompress(rest, room - len(out))
        return out
