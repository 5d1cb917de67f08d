"""Read a tar's headers from a forward-only stream: the member's name, type, size and mtime, nothing more.

:mod:`tarfile` builds a full :class:`tarfile.TarInfo` for every header (two
per file in Cartd's tars, which carry a PAX header for the float mtime), a
large share of a many-small-files transfer (see ``benchmarks/README.md``).  This reader
decodes only what :class:`~pacifica.downloader._receive.CartReceiver` needs,
in the formats Python's tarfile and GNU tar write (ustar, GNU, PAX), with
tarfile's rules for what a header means, and is stricter where tarfile
would guess:

* every header's checksum is checked, and a number field must be octal or
  GNU base-256;
* a PAX record must be well formed (``"<length> <key>=<value>\\n"``), and a
  negative size is refused;
* a PAX, GNU long-name or long-link header larger than ``MAX_READ``
  (16 MiB) is refused before it is read (by :meth:`CartStream.read`);
* members are never interpreted here: links, devices and sparse files are
  returned as such, for the caller to refuse.

A bad header raises :class:`MalformedTar` (``first`` says whether anything
was read before it: then the body is not a tar at all); a stream that ends
inside a header or a member's padding raises :class:`StreamBroken`.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ._exceptions import MalformedTar, StreamBroken
from ._stream import CartStream

#: The tar block size.
BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
#: Types whose data follows the header (tarfile's REGULAR_TYPES); others
#: that tarfile knows have none, whatever their size field says.
_DATA_TYPES = frozenset([b"0", b"\0", b"7", b"S"])
_KNOWN_TYPES = frozenset(bytes([flag]) for flag in b"0\x0001234567LKSxgX")
#: Types that describe the next member rather than being one.
_PAX_TYPES = frozenset([b"x", b"X"])
_GNU_TYPES = frozenset([b"L", b"K", b"S"])
_SIGNED = struct.Struct("148b8x356b")


#: Type flags of plain regular files, and of folders.
FILE_TYPES = (b"0", b"\0")
FOLDER_TYPE = b"5"
_KINDS = {b"1": "hard link", b"2": "symbolic link", b"3": "device", b"4": "device", b"6": "FIFO"}


class TarMember(NamedTuple):
    """One member's header, as tarfile would read it.

    ``type`` is the one-byte type flag (``b"0"`` a file, ``b"5"`` a folder,
    ...; an old-style file whose name ends in ``/`` is a folder); ``sparse``
    is True for GNU sparse members, by type or by PAX record.
    """

    name: str
    type: bytes
    size: int
    mtime: float
    sparse: bool

    @property
    def isfile(self) -> bool:
        """A plain regular file (not sparse)."""
        return self.type in FILE_TYPES and not self.sparse

    @property
    def isdir(self) -> bool:
        """A folder."""
        return self.type == FOLDER_TYPE

    @property
    def kind(self) -> str:
        """What the member is, in words, for messages."""
        if self.sparse:
            return "sparse file"
        if self.isfile:
            return "file"
        if self.isdir:
            return "folder"
        return _KINDS.get(self.type, f"entry of type {self.type!r}")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _field(raw: bytes) -> bytes:
    """A NUL-terminated header field."""
    return raw.partition(b"\0")[0]


class TarReader:
    """Walk the headers of the tar in ``stream``; the caller reads or skips each member's data."""

    def __init__(self, stream: CartStream) -> None:
        """Read from ``stream``, positioned at the tar's first header."""
        self._stream = stream
        self._next_header = stream.tell()
        self._start = self._next_header
        self._globals: dict[str, str] = {}

    def next(self) -> TarMember | None:
        """Return the next member's header, or None at the end of the archive.

        The end is an all-zero block or the stream ending cleanly on a
        header boundary; whatever the caller left unread of the previous
        member is skipped first.
        """
        self._skip_to(self._next_header)
        records: dict[str, str] | None = None
        long_name: str | None = None
        while True:
            block = self._stream.read(BLOCK)
            if not block:
                return None
            if len(block) < BLOCK:
                if self._at_start():
                    raise MalformedTar(f"it is {len(block)} bytes long, less than one tar header", first=True)
                raise StreamBroken("the stream ended inside a tar header", self._stream.tell())
            if block == _ZERO_BLOCK:
                return None
            kind, size = self._check(block)
            if kind in _PAX_TYPES or kind == b"g":
                found = self._pax_records(self._read_data(size))
                if kind == b"g":
                    self._globals.update(found)  # tarfile applies them only through a later local header
                else:
                    records = {**self._globals, **(records or {}), **found}
                continue
            if kind in (b"L", b"K"):
                value = _text(_field(self._read_data(size)))
                if kind == b"L":
                    long_name = value
                continue
            return self._member(block, kind, size, records, long_name)

    # -- helpers ---------------------------------------------------------------------

    def _at_start(self) -> bool:
        return self._stream.tell() <= self._start + BLOCK

    def _skip_to(self, position: int) -> None:
        if self._stream.seek(position) < position:
            raise StreamBroken("the stream ended inside a tar entry", self._stream.tell())

    def _check(self, block: bytes) -> tuple[bytes, int]:
        """Verify the checksum; return the type flag and the size field."""
        stored = self._number(block[148:156], "checksum")
        unsigned = sum(block) - sum(block[148:156]) + 256  # the checksum field counts as eight spaces
        if stored != unsigned and stored != sum(_SIGNED.unpack_from(block)) + 256:
            raise MalformedTar("a tar header has a bad checksum", first=self._at_start())
        size = self._number(block[124:136], "size")
        if size < 0:
            raise MalformedTar(f"a tar header declares a negative size ({size})", first=self._at_start())
        return block[156:157], size

    def _number(self, raw: bytes, what: str) -> int:
        """A numeric field: octal text, or GNU base-256 (first byte 0x80 or 0xff)."""
        if raw[0] in (0x80, 0xFF):
            value = int.from_bytes(raw[1:], "big")
            return value - 256 ** (len(raw) - 1) if raw[0] == 0xFF else value
        text = _field(raw).strip()
        if text.translate(None, b"01234567"):  # anything but octal digits left
            raise MalformedTar(f"a tar header's {what} field is not a number: {raw!r}", first=self._at_start())
        return int(text, 8) if text else 0

    def _read_data(self, size: int) -> bytes:
        """The data of a header that describes the next member (read whole, padding skipped)."""
        data = self._stream.read(size)  # refuses sizes above MAX_READ before reading anything
        if len(data) < size:
            raise StreamBroken("the stream ended inside a tar entry", self._stream.tell())
        self._skip_to(self._stream.tell() + (-size % BLOCK))
        return data

    def _pax_records(self, data: bytes) -> dict[str, str]:
        """Parse ``"<length> <key>=<value>\\n"`` records (trailing NUL padding allowed)."""
        records: dict[str, str] = {}
        position = 0
        while position < len(data) and data[position] != 0:
            space = data.find(b" ", position, position + 20)
            digits = data[position:space] if space > position else b""
            if not digits.isdigit():
                raise MalformedTar("a PAX header has a malformed record", first=False)
            end = position + int(digits)
            keyword, equals, value = data[space + 1 : end - 1].partition(b"=")
            if end <= space + 2 or end > len(data) or data[end - 1 : end] != b"\n" or not equals or not keyword:
                raise MalformedTar("a PAX header has a malformed record", first=False)
            records[_text(keyword)] = _text(value)
            position = end
        return records

    def _member(
        self, block: bytes, kind: bytes, size: int, records: dict[str, str] | None, long_name: str | None
    ) -> TarMember:
        name = _text(_field(block[0:100]))
        prefix = _text(_field(block[345:500]))
        if kind == b"\0" and name.endswith("/"):
            kind = FOLDER_TYPE  # old tars mark a folder by the trailing slash
        if kind == FOLDER_TYPE:
            name = name.rstrip("/")
        if prefix and kind not in _GNU_TYPES:
            name = prefix + "/" + name
        if long_name is not None:
            name = long_name.rstrip("/") if kind == FOLDER_TYPE else long_name
        mtime = float(self._number(block[136:148], "mtime"))
        sparse = kind == b"S"
        if records:
            name = records["path"].rstrip("/") if "path" in records else name
            if "size" in records:
                size = int(records["size"]) if records["size"].isascii() and records["size"].isdigit() else 0
            if "mtime" in records:
                try:
                    mtime = float(records["mtime"])
                except ValueError:
                    mtime = 0.0
            sparse = sparse or any(key.startswith("GNU.sparse.") for key in records)
        has_data = kind in _DATA_TYPES or kind not in _KNOWN_TYPES
        self._next_header = self._stream.tell() + (size + (-size % BLOCK) if has_data else 0)
        return TarMember(name, kind, size, mtime, sparse)
