"""The one tar builder of the tests: members (regular files and anything else) into a tar, in any format."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping, Sequence

__all__ = ["Member", "build_tar", "make_tar", "reg", "special"]

#: One member: its header and, for a regular file, its bytes.
Member = tuple[tarfile.TarInfo, bytes]


def reg(
    name: str, data: bytes, *, mode: int = 0o644, mtime: float = 1_600_000_000, pax: dict[str, str] | None = None
) -> Member:
    """A regular-file member; ``pax`` records are written in the PAX format only."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = mtime  # type: ignore[assignment]  # tarfile takes floats
    if pax:
        info.pax_headers = dict(pax)
    return info, data


def special(
    name: str, kind: bytes, linkname: str = "", pax: dict[str, str] | None = None, mtime: float = 1_600_000_000
) -> Member:
    """A member that is not a regular file: a link, device, FIFO, folder ..."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = mtime  # type: ignore[assignment]
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    if pax:
        info.pax_headers = dict(pax)
    return info, b""


def build_tar(
    members: Sequence[Member],
    fmt: int = tarfile.PAX_FORMAT,
    *,
    end_blocks: bool = True,
    global_pax: dict[str, str] | None = None,
) -> bytes:
    """The tar of ``members`` in ``fmt``; without the end-of-archive blocks when ``end_blocks`` is False."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, pax_headers=global_pax or {}) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
        unterminated = buffer.tell()
    raw = buffer.getvalue()
    return raw if end_blocks else raw[:unterminated]


def make_tar(top: str, files: Mapping[str, bytes], links: Mapping[str, str] | None = None) -> bytes:
    """A tar as Cartd sends it: ``files`` ({"a/b.txt": bytes}) below the folder ``top``; ``links`` adds symlinks."""
    members = [reg(f"{top}/{path}", content) for path, content in files.items()]
    members += [special(f"{top}/{path}", tarfile.SYMTYPE, target) for path, target in (links or {}).items()]
    return build_tar(members)
