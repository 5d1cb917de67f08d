"""The tar header reader: it reads honest tars exactly as tarfile does, and refuses or flags what is malformed.

The hostile-archive suite (test_hostile_archives.py) checks what the
download does with each kind of member; these tests check the reader alone,
on tars built in memory and served in chunks of every size, so that headers
straddle chunk boundaries.
"""

from __future__ import annotations

import io
import tarfile
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.helpers import fake_response
from support.tars import build_tar, reg, special

from pacifica.downloader._config import Timeouts
from pacifica.downloader._exceptions import MalformedTar, StreamBroken, UnsafeArchiveError
from pacifica.downloader._retry import Retry, RetryBudget
from pacifica.downloader._stream import CartStream
from pacifica.downloader._tarheaders import BLOCK, TarMember, TarReader

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


def stream_of(body: bytes, chunk: int = 1 << 20) -> CartStream:
    def reopen(offset: int) -> Any:
        raise AssertionError("no resume expected")

    return CartStream(
        fake_response(body, chunk),
        reopen,
        timeouts=Timeouts(),  # type: ignore[arg-type]
        budget=RetryBudget(Retry(attempts=1)),
    )


def read_all(body: bytes, chunk: int = 1 << 20) -> list[tuple[TarMember, bytes]]:
    """Every member with the data the caller would read (all of a file's, none of the others')."""
    stream = stream_of(body, chunk)
    reader = TarReader(stream)
    found = []
    while (member := reader.next()) is not None:
        data = stream.read(member.size) if member.isfile else b""
        found.append((member, data))
    return found


def reference(body: bytes) -> list[tuple[str, bytes, int, float, bytes]]:
    """What tarfile reads from ``body``."""
    found = []
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as archive:
        for info in archive:
            handle = archive.extractfile(info) if info.isreg() else None
            # Python < 3.11.4 keeps the "/" that ends a folder's GNU long name; later ones and this reader drop it.
            name = info.name.rstrip("/") if info.isdir() else info.name
            found.append((name, info.type, info.size, float(info.mtime), handle.read() if handle else b""))
    return found


def build(members: list[tuple[str, bytes | None, float]], fmt: int, global_pax: dict[str, str] | None = None) -> bytes:
    """A tar of (name, content or None for a folder, mtime) members."""
    return build_tar(
        [
            special(name, tarfile.DIRTYPE, mtime=mtime) if content is None else reg(name, content, mtime=mtime)
            for name, content, mtime in members
        ],
        fmt,
        global_pax=global_pax,
    )


def header(name: bytes, kind: bytes, size: int, size_field: bytes | None = None) -> bytes:
    """One raw ustar header with a correct checksum (``size_field`` replaces the octal size)."""
    block = bytearray(BLOCK)
    block[0 : len(name)] = name
    block[100:108] = b"0000644\0"
    block[124:136] = size_field if size_field is not None else b"%011o\0" % size
    block[136:148] = b"%011o\0" % 1_700_000_000
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def record(key: str, value: str) -> bytes:
    """One well-formed PAX record; its length counts its own digits."""
    body = f" {key}={value}\n".encode()
    length = len(body) + len(str(len(body)))
    length += len(str(length)) - len(str(len(body)))
    return str(length).encode() + body


def pax(records: bytes) -> bytes:
    return header(b"././@PaxHeader", b"x", len(records)) + padded(records)


END = bytes(2 * BLOCK)

SEGMENT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
    lambda part: "/" not in part and part not in (".", "..")
)
MEMBERS = st.lists(
    st.tuples(
        st.lists(SEGMENT, min_size=1, max_size=6).map("/".join),
        st.one_of(st.none(), st.binary(max_size=1500)),
        st.one_of(st.integers(0, 2**33 - 1), st.floats(0, 2**33, allow_nan=False).map(lambda x: round(x, 3))),
    ),
    max_size=8,
    unique_by=lambda member: member[0],
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    members=MEMBERS,
    fmt=st.sampled_from(sorted(FORMATS)),
    chunk=st.sampled_from([1, 7, 512, 700, 1 << 20]),
    global_pax=st.booleans(),
)
@example(members=[("top/" + "d" * 120, None, 0)], fmt="gnu", chunk=512, global_pax=False)  # a folder's long name
def test_reads_what_tarfile_reads(
    members: list[tuple[str, bytes | None, float]], fmt: str, chunk: int, global_pax: bool
) -> None:
    try:
        extra = {"comment": "made by a test"} if global_pax and fmt == "pax" and members else None
        body = build(members, FORMATS[fmt], extra)
    except ValueError:  # a name ustar cannot hold
        return
    expected = reference(body)
    got = [(m.name, m.type, m.size, m.mtime, data) for m, data in read_all(body, chunk)]
    assert got == expected


def test_an_empty_body_has_no_members_and_zero_blocks_end_the_archive() -> None:
    assert read_all(b"") == []
    assert read_all(bytes(10240)) == []
    body = build([("top/a", b"x", 1)], tarfile.PAX_FORMAT)
    assert [m.name for m, _ in read_all(body + b"garbage after the end")] == ["top/a"]


def test_a_tar_without_end_blocks_ends_on_a_header_boundary() -> None:
    body = header(b"top/a", b"0", 3) + padded(b"abc")
    assert [(m.name, data) for m, data in read_all(body)] == [("top/a", b"abc")]


def test_unread_data_and_padding_are_skipped() -> None:
    body = build([("top/a", b"x" * 1000, 1), ("top/b", b"y", 1)], tarfile.PAX_FORMAT)
    reader = TarReader(stream_of(body))
    assert [reader.next().name, reader.next().name, reader.next()] == ["top/a", "top/b", None]  # type: ignore[union-attr]


def test_a_folder_size_field_is_not_data() -> None:
    """As in tarfile: only files have data; a folder's size field does not move the next header."""
    body = header(b"top/", b"5", 512) + header(b"top/a", b"0", 1) + padded(b"z") + END
    assert reference(body)[1][0] == "top/a"
    assert [(m.name, m.type) for m, _ in read_all(body)] == [("top", b"5"), ("top/a", b"0")]


def test_links_devices_and_sparse_members_are_reported_as_such() -> None:
    body = b"".join(header(b"top/" + kind, kind, 0) for kind in (b"1", b"2", b"3", b"6")) + END
    assert [m.type for m, _ in read_all(body)] == [b"1", b"2", b"3", b"6"]
    sparse = pax(record("GNU.sparse.size", "10")) + header(b"top/s", b"0", 0) + END
    assert read_all(sparse)[0][0].sparse
    assert read_all(header(b"top/s", b"S", 0) + END)[0][0].sparse


def test_pax_records_override_name_size_and_mtime() -> None:
    records = record("path", "top/long") + record("size", "3") + record("mtime", "1.5e9")
    body = pax(records) + header(b"top/short", b"0", 99) + padded(b"abc") + END
    ((member, data),) = read_all(body)
    assert (member.name, member.size, member.mtime, data) == ("top/long", 3, 1.5e9, b"abc")


def test_a_pax_mtime_that_is_not_a_number_reads_as_zero_as_in_tarfile() -> None:
    body = pax(record("mtime", "abc")) + header(b"top/a", b"0", 0) + END
    assert read_all(body)[0][0].mtime == reference(body)[0][3] == 0.0


def test_bad_checksum_first_means_not_a_tar_later_means_malformed() -> None:
    good = header(b"top/a", b"0", 0)
    bad = good[:148] + b"0000000\0" + good[156:]
    with pytest.raises(MalformedTar) as first:
        read_all(bad)
    assert first.value.first
    with pytest.raises(MalformedTar) as later:
        read_all(good + bad)
    assert not later.value.first


def test_a_short_body_is_not_a_tar() -> None:
    with pytest.raises(MalformedTar) as error:
        read_all(b"<html>502 Bad Gateway</html>")
    assert error.value.first


@pytest.mark.parametrize(
    "size_field",
    [b"00000000009\0", b"0x0000000010", b"-0000000001\0", b"\xff" * 12],
    ids=["not-octal", "hex", "minus", "negative-base-256"],
)
def test_bad_or_negative_size_fields_are_refused(size_field: bytes) -> None:
    with pytest.raises(MalformedTar):
        read_all(header(b"top/a", b"0", 0, size_field))


def test_base256_size_is_read() -> None:
    body = header(b"top/a", b"0", 0, b"\x80" + (5).to_bytes(11, "big")) + padded(b"12345") + END
    assert [(m.size, data) for m, data in read_all(body)] == [(5, b"12345")]


@pytest.mark.parametrize(
    "records",
    [b"99 path=top/a\n", b"12 path=top/a", b"x path=top/a\n", b"8 path\n\n", b"0 path=a\n", b"14 =top/aaaaa\n"],
    ids=["too-long", "no-newline", "no-length", "no-equals", "zero-length", "no-keyword"],
)
def test_malformed_pax_records_are_refused(records: bytes) -> None:
    with pytest.raises(MalformedTar):
        read_all(pax(records) + header(b"top/a", b"0", 0) + END)


def test_a_giant_pax_header_is_refused_before_it_is_read() -> None:
    body = header(b"././@PaxHeader", b"x", 17 * 1024 * 1024) + b"9" * 4096
    with pytest.raises(UnsafeArchiveError):
        read_all(body)


@pytest.mark.parametrize(
    "cut", [BLOCK + 10, BLOCK + 100, 2 * BLOCK + 10], ids=["in-pax-data", "in-pax-padding", "in-member-header"]
)
def test_a_stream_ending_inside_a_header_is_broken(cut: int) -> None:
    body = pax(record("path", "top/long")) + header(b"top/a", b"0", 0) + END
    with pytest.raises(StreamBroken):
        read_all(body[:cut])


def test_a_stream_ending_inside_padding_is_broken() -> None:
    body = header(b"top/a", b"0", 3) + b"abc" + bytes(100)
    stream = stream_of(body)
    reader = TarReader(stream)
    assert reader.next() is not None
    with pytest.raises(StreamBroken):
        reader.next()
