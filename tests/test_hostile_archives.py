"""Security tests: a hostile (or broken) Cartd serving crafted tars must never get a write outside the download.

Every tar is built here with :class:`tarfile.TarInfo` (GNU and PAX formats,
short and long names so that GNU ``././@LongLink`` and PAX ``path`` /
``linkpath`` records are exercised) and served by :class:`StubCartd`.

For each hostile case the test checks the typed error and the invariants the
library promises:

* nothing outside the download directory changed: a snapshot of ``tmp_path``
  (download directory excluded) is identical before and after, with every
  mtime frozen to a fixed old value first, so that even a file or folder
  created and removed again would show (its parent's mtime would move);
* the sentinel file outside keeps its content and mtime;
* no file sits under a final name unless its content is verified, nothing but
  regular files and folders exist under the download directory (apart from
  what the test put there), and no ``.part`` incoming file is left;
* the incoming folder ``.pacifica-downloader`` is gone;
* the cart was DELETEd on the server.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
from support.events import event_for
from support.helpers import incoming_leftovers, is_index_file
from support.stub_cartd import StubCartd
from support.tars import Member, build_tar, reg, special

from pacifica.downloader import (
    DestinationError,
    Downloader,
    DownloaderError,
    IntegrityError,
    ManifestError,
    Retry,
    Timeouts,
    TransferError,
    UnsafeArchiveError,
)

#: Every path outside the download directory gets this mtime before a run.
FROZEN_NS = 1_000_000_000 * 1_000_000_000
#: The incoming folder the library keeps inside the download directory.
STAGING = ".pacifica-downloader"
#: A PAX/GNU header bigger than the library's 16 MiB cap.
GIANT = 17 * 1024 * 1024
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX

FORMATS = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


# -- the files an event asks for ---------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One requested file: where it goes and the content whose sha1 the event promises."""

    subdir: str
    name: str
    content: bytes

    @property
    def path(self) -> str:
        return f"{self.subdir}/{self.name}" if self.subdir else self.name

    @property
    def sha1(self) -> str:
        return hashlib.sha1(self.content).hexdigest()


# -- building tars ---------------------------------------------------------------------


def raw_header(name: str, kind: bytes, size: int) -> bytes:
    """One 512-byte header of type ``kind`` declaring ``size`` bytes, without its data."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def member_offsets(raw: bytes) -> dict[str, tuple[int, int]]:
    """Map each member name of a well-formed tar to (header offset, data offset)."""
    offsets = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
        for member in archive:
            offsets[member.name] = (member.offset, member.offset_data)
    return offsets


def _honest(specs: Sequence[Spec]) -> Callable[[str, str], bytes]:
    """A body callable serving an honest tar of ``specs``."""

    def body(uid: str, top: str) -> bytes:
        return build_tar([reg(top + "/" + spec.path, spec.content) for spec in specs], tarfile.PAX_FORMAT)

    return body


# -- the scene: a download directory, an outside directory, snapshots -------------------


FileState = tuple[Any, ...]


def _state(path: Path) -> FileState:
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return ("link", os.readlink(path), info.st_mtime_ns)
    if stat.S_ISDIR(info.st_mode):
        return ("dir", stat.S_IMODE(info.st_mode), info.st_mtime_ns)
    if stat.S_ISREG(info.st_mode):
        return ("file", stat.S_IMODE(info.st_mode), info.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return ("other", info.st_mode, info.st_mtime_ns)


def _walk(root: Path, exclude: Path | None = None) -> Iterator[Path]:
    """``root`` and everything below it, never following links, skipping ``exclude``'s subtree."""
    if exclude is not None and root == exclude:
        return
    yield root
    if root.is_dir() and not root.is_symlink():
        for entry in sorted(root.iterdir()):
            yield from _walk(entry, exclude)


@dataclass
class Scene:
    """``tmp/dl`` is the download directory; ``tmp/outside`` holds a sentinel nobody may touch."""

    tmp: Path
    #: Paths (relative to ``dl``) the test put there itself and the checks must tolerate.
    preexisting: set[str] = field(default_factory=set)
    frozen: dict[str, FileState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dl = self.tmp / "dl"
        self.data = self.dl / "data"
        self.outside = self.tmp / "outside"
        self.sentinel = self.outside / "sentinel.txt"
        self.dl.mkdir()
        self.outside.mkdir()
        self.sentinel.write_bytes(b"do not touch\n")

    def freeze(self) -> None:
        """Set every mtime outside the download directory to FROZEN_NS, then snapshot it all."""
        for path in _walk(self.tmp, exclude=self.dl):
            os.utime(path, ns=(FROZEN_NS, FROZEN_NS), follow_symlinks=False)
        self.frozen = self.snapshot()

    def snapshot(self) -> dict[str, FileState]:
        """The state of everything under ``tmp`` except the download directory."""
        return {str(path.relative_to(self.tmp)): _state(path) for path in _walk(self.tmp, exclude=self.dl)}

    def downloader(self, url: str, **kwargs: Any) -> Downloader:
        """A downloader into ``dl`` with small timeouts and one retry, never using a proxy."""
        session = requests.Session()
        session.trust_env = False
        kwargs.setdefault("timeouts", Timeouts(connect=2, read=2, stall=2, wait=5))
        kwargs.setdefault("retry", Retry(attempts=2, backoff=0.01))
        return Downloader(self.dl, url, session=session, **kwargs)

    # -- the invariants ---------------------------------------------------------------

    def check_outside_untouched(self) -> None:
        assert self.sentinel.read_bytes() == b"do not touch\n"
        assert os.lstat(self.sentinel).st_mtime_ns == FROZEN_NS
        after = self.snapshot()
        assert after == self.frozen, f"something outside the download directory changed: {_diff(self.frozen, after)}"

    def check_download_dir(self, specs: Sequence[Spec], placed: Sequence[Spec] = ()) -> None:
        """Only verified requested files, folders and the test's own files are in ``dl``; no staging left.

        ``placed`` must be present and verified; any other requested file
        may be absent but, if present, must be verified.
        """
        if STAGING not in self.preexisting:
            assert incoming_leftovers(self.dl) == [], "the incoming folder was left behind"
        wanted = {spec.path: spec for spec in specs}
        for path in _walk(self.dl):
            relative = str(path.relative_to(self.dl))
            if (
                path == self.dl
                or relative == STAGING
                or is_index_file(self.dl, path)
                or any(relative == mine or relative.startswith(mine + "/") for mine in self.preexisting)
            ):
                continue
            info = os.lstat(path)
            assert not path.name.endswith(".part"), f"a incoming file was left: {relative}"
            if stat.S_ISDIR(info.st_mode):
                continue
            assert stat.S_ISREG(info.st_mode), f"{relative} is not a regular file or folder ({info.st_mode:o})"
            assert relative.startswith("data/"), f"unexpected file {relative}"
            spec = wanted.get(relative[len("data/") :])
            assert spec is not None, f"a file nobody asked for was written: {relative}"
            assert hashlib.sha1(path.read_bytes()).hexdigest() == spec.sha1, (
                f"{relative} is under its final name with unverified content"
            )
        for spec in placed:
            final = self.data / spec.path
            assert final.is_file() and not final.is_symlink(), f"{spec.path} should have been placed"
            assert final.read_bytes() == spec.content


def _diff(before: dict[str, FileState], after: dict[str, FileState]) -> str:
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            lines.append(f"{key}: {before.get(key)} -> {after.get(key)}")
    return "; ".join(lines)


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    return Scene(tmp_path)


def run(
    scene: Scene,
    specs: Sequence[Spec],
    body: Callable[[str, str], bytes],
    downloader_kwargs: dict[str, Any] | None = None,
    **stub_kwargs: Any,
) -> tuple[StubCartd, BaseException | None, list[str] | None]:
    """Freeze the scene, download ``specs`` from a stub serving ``body``; return the stub, error and result."""
    scene.freeze()
    error: BaseException | None = None
    result: list[str] | None = None
    event = event_for({spec.path: spec.content for spec in specs})
    with StubCartd(body=body, **stub_kwargs) as cartd:
        try:
            result = scene.downloader(cartd.url, **(downloader_kwargs or {})).cloudevent(event)
        except Exception as err:  # the test decides what was acceptable
            error = err
    assert not cartd.errors, "the test's tar builder failed:\n" + "\n".join(cartd.errors)
    return cartd, error, result


def expect_error(
    error: BaseException | None, kind: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException:
    """Assert the download raised ``kind`` (a class or a tuple of classes); return the error."""
    names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    assert error is not None, f"the download succeeded; expected {names}"
    assert isinstance(error, kind), f"expected {names}, got {type(error).__name__}: {error}"
    return error


def check_deleted(cartd: StubCartd) -> None:
    assert cartd.count("POST") == 1
    assert cartd.deleted(), f"the cart was not deleted: {cartd.methods()}"


# -- the files most cases ask for ------------------------------------------------------

#: Comes first in the tar when ``lead`` is on: it must end up verified and kept.
LEGIT = Spec("a", "y.txt", b"a legitimate file\n")
#: The file the hostile entries are about.
TARGET = Spec("a/b", "x.txt", b"the real content of x\n")
#: A long folder, so names pass 100 characters and need GNU LongLink / PAX path records.
DEEP = "a/b/" + "d" * 60 + "/" + "e" * 60


# -- the hostile cases -----------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    """What a case builder gets: the tar's top folder, the scene, the target's path in the tar."""

    top: str
    scene: Scene
    target: Spec

    @property
    def name(self) -> str:
        """The target's member name."""
        return f"{self.top}/{self.target.path}"

    @property
    def folder(self) -> str:
        """The target's folder's member name."""
        return f"{self.top}/{self.target.subdir}"


@dataclass(frozen=True)
class Case:
    """One hostile tar: ``entries(ctx)`` are appended after the optional legitimate lead entry."""

    id: str
    entries: Callable[[Ctx], list[Member]]
    expect: type[BaseException]
    check: Callable[[BaseException, Ctx], None] = lambda error, ctx: None
    formats: tuple[str, ...] = ("gnu", "pax")


def _outside(ctx: Ctx, name: str = "sentinel.txt") -> str:
    return str(ctx.scene.outside / name)


def _dotdots(ctx: Ctx) -> str:
    """The relative way from the target's folder (in ``dl/data``) up to ``tmp``."""
    return "../" * (ctx.target.subdir.count("/") + 3)


def _check_unexpected(path: str) -> Callable[[BaseException, Ctx], None]:
    def check(error: BaseException, ctx: Ctx) -> None:
        assert isinstance(error, ManifestError)
        assert error.unexpected == [path]

    return check


def _check_duplicated(error: BaseException, ctx: Ctx) -> None:
    assert isinstance(error, ManifestError)
    assert error.duplicated == [ctx.target.path]


def _check_missing(error: BaseException, ctx: Ctx) -> None:
    assert isinstance(error, ManifestError)
    assert ctx.target.path in error.missing


CASES = [
    # Links: refused whatever they point to, and so is anything written "through" them.
    Case("symlink-absolute", lambda c: [special(c.name, tarfile.SYMTYPE, _outside(c))], UnsafeArchiveError),
    Case(
        "symlink-dotdot",
        lambda c: [special(c.name, tarfile.SYMTYPE, _dotdots(c) + "outside/sentinel.txt")],
        UnsafeArchiveError,
    ),
    Case(
        "symlink-then-file-through-it",
        lambda c: [special(c.name, tarfile.SYMTYPE, _outside(c)), reg(c.name, c.target.content)],
        UnsafeArchiveError,
    ),
    Case(
        # CVE-2025-4517 style: a folder symlink out of the tree, then a file below it.
        "dir-symlink-chain-relative",
        lambda c: [
            special(c.top + "/a", tarfile.SYMTYPE, "../../outside"),
            reg(c.top + "/a/x.txt", b"evil\n"),
            reg(c.name, c.target.content),
        ],
        UnsafeArchiveError,
    ),
    Case(
        "dir-symlink-chain-absolute",
        lambda c: [special(c.top + "/a", tarfile.SYMTYPE, str(c.scene.outside)), reg(c.name, c.target.content)],
        UnsafeArchiveError,
    ),
    Case(
        "symlink-long-linkname",
        lambda c: [special(c.name, tarfile.SYMTYPE, "../" * 40 + str(c.scene.outside).lstrip("/") + "/sentinel.txt")],
        UnsafeArchiveError,
    ),
    Case(
        "hardlink-absolute-then-file",
        lambda c: [special(c.name, tarfile.LNKTYPE, _outside(c)), reg(c.name, c.target.content)],
        UnsafeArchiveError,
    ),
    Case(
        "hardlink-dotdot",
        lambda c: [special(c.name, tarfile.LNKTYPE, _dotdots(c) + "outside/sentinel.txt")],
        UnsafeArchiveError,
    ),
    Case(
        "hardlink-inside-archive",
        lambda c: [special(c.name, tarfile.LNKTYPE, c.top + "/" + LEGIT.path)],
        UnsafeArchiveError,
    ),
    # Not regular files.
    Case("char-device", lambda c: [special(c.name, tarfile.CHRTYPE)], UnsafeArchiveError),
    Case("block-device", lambda c: [special(c.name, tarfile.BLKTYPE)], UnsafeArchiveError),
    Case("fifo", lambda c: [special(c.name, tarfile.FIFOTYPE)], UnsafeArchiveError),
    Case("gnu-sparse", lambda c: [special(c.name, tarfile.GNUTYPE_SPARSE)], UnsafeArchiveError, formats=("gnu",)),
    # Names that point elsewhere.
    Case("absolute-name-outside", lambda c: [reg(_outside(c, "evil.txt"), b"evil\n")], UnsafeArchiveError),
    Case("absolute-name-top", lambda c: [reg("/" + c.name, c.target.content)], UnsafeArchiveError),
    Case("dotdot-after-top", lambda c: [reg(c.top + "/../../outside/evil.txt", b"evil\n")], UnsafeArchiveError),
    Case(
        "dotdot-deep", lambda c: [reg(c.folder + "/" + _dotdots(c) + "outside/evil.txt", b"evil\n")], UnsafeArchiveError
    ),
    Case(
        "dotdot-back-to-same-path",
        lambda c: [reg(c.folder + "/../" + c.target.subdir.rsplit("/", 1)[-1] + "/" + c.target.name, c.target.content)],
        UnsafeArchiveError,
    ),
    Case(
        "pax-path-override-dotdot",
        lambda c: [reg(c.name, b"evil\n", pax={"path": c.top + "/../../outside/evil.txt"})],
        UnsafeArchiveError,
        formats=("pax",),
    ),
    Case(
        "pax-path-override-absolute",
        lambda c: [reg(c.name, b"evil\n", pax={"path": _outside(c, "evil.txt")})],
        UnsafeArchiveError,
        formats=("pax",),
    ),
    Case(
        "pax-linkpath-symlink",
        lambda c: [special(c.name, tarfile.SYMTYPE, "x", pax={"linkpath": _outside(c)}), reg(c.name, c.target.content)],
        UnsafeArchiveError,
        formats=("pax",),
    ),
    Case("not-under-top", lambda c: [reg("elsewhere/" + c.target.path, c.target.content)], UnsafeArchiveError),
    Case("no-top-folder", lambda c: [reg(c.target.path, c.target.content)], UnsafeArchiveError),
    Case("top-changes-midway", lambda c: [reg("other-top/" + c.target.path, c.target.content)], UnsafeArchiveError),
    Case("backslash-top", lambda c: [reg(c.top + "\\..\\x/" + c.target.path, c.target.content)], UnsafeArchiveError),
    # The set of files is not the set requested.
    Case(
        "unrequested-extra-file",
        lambda c: [reg(c.name, c.target.content), reg(c.top + "/a/evil.sh", b"#!/bin/sh\n")],
        ManifestError,
        check=_check_unexpected("a/evil.sh"),
    ),
    Case(
        "unrequested-folder",
        lambda c: [special(c.top + "/zzz", tarfile.DIRTYPE), reg(c.name, c.target.content)],
        ManifestError,
        check=_check_unexpected("zzz"),
    ),
    Case(
        "duplicated-file-same-content",
        lambda c: [reg(c.name, c.target.content), reg(c.name, c.target.content)],
        ManifestError,
        check=_check_duplicated,
    ),
    Case(
        "duplicated-file-other-content",
        lambda c: [reg(c.name, c.target.content), reg(c.name, b"replacement\n")],
        ManifestError,
        check=_check_duplicated,
    ),
    Case("missing-file", lambda c: [], ManifestError, check=_check_missing),
]


#: ``lead``: a legitimate file comes first (and must stay, verified); ``deep``: names past 100 characters.
PLACEMENTS = {"lead": (True, False), "first": (False, False), "deep": (True, True)}


@pytest.mark.parametrize(
    "case,fmt,lead,deep",
    [
        pytest.param(case, fmt, lead, deep, id=f"{case.id}-{fmt}-{placement}")
        for case in CASES
        for fmt in case.formats
        for placement, (lead, deep) in PLACEMENTS.items()
    ],
)
def test_hostile_member(scene: Scene, case: Case, fmt: str, lead: bool, deep: bool) -> None:
    """Each hostile tar is refused with its typed error and nothing escapes the download directory."""
    target = Spec(DEEP, TARGET.name, TARGET.content) if deep else TARGET
    specs = [LEGIT, target]
    contexts: list[Ctx] = []

    def body(uid: str, top: str) -> bytes:
        ctx = Ctx(top, scene, target)
        contexts.append(ctx)
        members = [reg(top + "/" + LEGIT.path, LEGIT.content)] if lead else []
        return build_tar(members + case.entries(ctx), FORMATS[fmt])

    cartd, error, _ = run(scene, specs, body)
    error = expect_error(error, case.expect)
    case.check(error, contexts[0])
    scene.check_outside_untouched()
    scene.check_download_dir(specs, placed=[LEGIT] if lead else [])
    check_deleted(cartd)


# -- NUL in a name ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_nul_in_member_name(scene: Scene, fmt: str) -> None:
    """A name with a NUL (only a PAX record can carry one) is refused, not truncated or passed to open()."""
    if fmt == "gnu":
        pytest.skip(
            "GNU/ustar name fields and ././@LongLink records are NUL-terminated: tarfile's reader cuts the "
            "name at the first NUL, so a NUL cannot reach the library through this format"
        )
    specs = [LEGIT, TARGET]

    def body(uid: str, top: str) -> bytes:
        return build_tar(
            [
                reg(top + "/" + LEGIT.path, LEGIT.content),
                reg(
                    top + "/" + TARGET.path,
                    TARGET.content,
                    pax={"path": top + "/" + TARGET.path + "\x00/../../outside/x"},
                ),
            ],
            FORMATS[fmt],
        )

    cartd, error, _ = run(scene, specs, body)
    expect_error(error, UnsafeArchiveError)
    scene.check_outside_untouched()
    scene.check_download_dir(specs, placed=[LEGIT])
    check_deleted(cartd)


# -- wrong hash ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_wrong_hash(scene: Scene, fmt: str) -> None:
    """A file whose digest differs raises IntegrityError naming it and both digests; it is not placed."""
    specs = [LEGIT, TARGET]
    tampered = b"tampered content\n"

    def body(uid: str, top: str) -> bytes:
        return build_tar(
            [reg(top + "/" + LEGIT.path, LEGIT.content), reg(top + "/" + TARGET.path, tampered)], FORMATS[fmt]
        )

    cartd, error, _ = run(scene, specs, body)
    error = expect_error(error, IntegrityError)
    assert type(error) is IntegrityError, "a wrong hash is not a manifest problem"
    actual = hashlib.sha1(tampered).hexdigest()
    assert isinstance(error, IntegrityError)
    assert (error.path, error.expected, error.actual) == (TARGET.path, TARGET.sha1, actual)
    for text in (TARGET.path, TARGET.sha1, actual):
        assert text in str(error)
    assert not (scene.data / TARGET.path).exists()
    scene.check_outside_untouched()
    scene.check_download_dir(specs, placed=[LEGIT])
    check_deleted(cartd)


# -- mode bits -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_setuid_setgid_sticky_bits_are_dropped(scene: Scene, fmt: str) -> None:
    """A legitimate file with mode 7777 (and a folder entry with 7777) downloads without any special bit."""
    specs = [LEGIT, TARGET]

    def body(uid: str, top: str) -> bytes:
        folder = special(top + "/a", tarfile.DIRTYPE)
        folder[0].mode = 0o7777
        return build_tar(
            [
                folder,
                reg(top + "/" + LEGIT.path, LEGIT.content, mode=0o7777),
                reg(top + "/" + TARGET.path, TARGET.content, mode=0o6755),
            ],
            FORMATS[fmt],
        )

    cartd, error, result = run(scene, specs, body)
    assert error is None, f"the download failed: {error!r}"
    assert result == [str(scene.data / spec.path) for spec in specs]
    for spec in specs:
        mode = os.lstat(scene.data / spec.path).st_mode
        assert not mode & SPECIAL_BITS, f"{spec.path} has mode {mode:o}"
    for folder in (scene.data / "a", scene.data / "a" / "b"):
        assert not os.lstat(folder).st_mode & SPECIAL_BITS
    scene.check_outside_untouched()
    scene.check_download_dir(specs, placed=specs)
    check_deleted(cartd)


# -- unusable timestamps -------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,mtime",
    [("gnu", 2**80), ("pax", "1e300"), ("pax", "nan"), ("pax", "-inf")],
    ids=["gnu-base256-huge", "pax-1e300", "pax-nan", "pax-minus-inf"],
)
def test_unusable_mtime(scene: Scene, fmt: str, mtime: Any) -> None:
    """An mtime the OS cannot store must not escape as a bare OverflowError/ValueError.

    Either the file is placed (the timestamp is cosmetic; the content is
    verified) or the archive is refused with UnsafeArchiveError.
    """
    specs = [TARGET]

    def body(uid: str, top: str) -> bytes:
        if fmt == "gnu":  # a base-256 number field
            member = reg(top + "/" + TARGET.path, TARGET.content, mtime=mtime)
        else:  # a PAX record, which tarfile reads with float()
            member = reg(top + "/" + TARGET.path, TARGET.content, mtime=1, pax={"mtime": mtime})
        return build_tar([member], FORMATS[fmt])

    cartd, error, _ = run(scene, specs, body)
    scene.check_outside_untouched()
    check_deleted(cartd)
    scene.check_download_dir(specs, placed=specs if error is None else [])
    if error is not None:
        assert isinstance(error, UnsafeArchiveError), f"untyped error for a hostile mtime: {error!r}"


# -- giant headers -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK],
    ids=["pax-x", "pax-global-g", "gnu-longname-L", "gnu-longlink-K"],
)
@pytest.mark.parametrize("lead", [True, False], ids=["after-a-file", "first"])
def test_giant_header_refused(scene: Scene, kind: bytes, lead: bool) -> None:
    """A header declaring more than 16 MiB is refused before it is read into memory."""
    specs = [LEGIT, TARGET]

    def body(uid: str, top: str) -> bytes:
        head = build_tar([reg(top + "/" + LEGIT.path, LEGIT.content)], tarfile.PAX_FORMAT, end_blocks=False)
        # The header, then a little of what it announces: a reader that trusts
        # the size would try to read 17 MiB and find the stream short.
        giant = raw_header("././@PaxHeader", kind, GIANT) + b"9" * 65536
        return (head if lead else b"") + giant

    cartd, error, _ = run(scene, specs, body)
    expect_error(error, UnsafeArchiveError)
    scene.check_outside_untouched()
    scene.check_download_dir(specs, placed=[LEGIT] if lead else [])
    check_deleted(cartd)


# -- truncated and broken streams -------------------------------------------------------


def _two_files(top: str, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    return build_tar(
        [reg(top + "/" + LEGIT.path, LEGIT.content), reg(top + "/" + TARGET.path, TARGET.content * 2000)], fmt
    )


BIG_TARGET = Spec(TARGET.subdir, TARGET.name, TARGET.content * 2000)


def _cut_inside_target_data(top: str) -> int:
    raw = _two_files(top)
    _, data = member_offsets(raw)[top + "/" + TARGET.path]
    return data + 1000


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "close-delimited"])
def test_truncated_mid_member_clean_close(scene: Scene, content_length: bool) -> None:
    """A tar that stops inside a member (the server closing cleanly) never passes for a complete download."""
    specs = [LEGIT, BIG_TARGET]

    def body(uid: str, top: str) -> bytes:
        return _two_files(top)[: _cut_inside_target_data(top)]

    cartd, error, _ = run(scene, specs, body, content_length=content_length)
    assert error is not None, "a truncated tar was accepted"
    assert isinstance(error, DownloaderError), f"untyped error: {error!r}"
    if isinstance(error, TransferError):
        assert cartd.count("GET") == 2, "a broken stream should be fetched again before giving up"
    assert not (scene.data / BIG_TARGET.path).exists()
    scene.check_outside_untouched()
    scene.check_download_dir(specs, placed=[LEGIT])
    check_deleted(cartd)


def test_truncated_inside_a_header(scene: Scene) -> None:
    """A tar cut in the middle of a member's header: the member is reported missing, nothing half-written."""
    specs = [LEGIT, BIG_TARGET]

    def body(uid: str, top: str) -> bytes:
        raw = _two_files(top)
        header, _ = member_offsets(raw)[top + "/" + TARGET.path]
        return raw[: header + 200]

    cartd, error, _ = run(scene, specs, body)
    assert error is not None, "a truncated tar was accepted"
    assert isinstance(error, DownloaderError), f"untyped error: {error!r}"
    scene.check_outside_untouched()
    scene.check_download_dir(specs, placed=[LEGIT])
    check_deleted(cartd)


def test_tar_ends_cleanly_without_end_blocks(scene: Scene) -> None:
    """A tar that simply stops after the first file (no end-of-archive blocks) is a ManifestError."""
    specs = [LEGIT, TARGET]

    def body(uid: str, top: str) -> bytes:
        return build_tar([reg(top + "/" + LEGIT.path, LEGIT.content)], tarfile.GNU_FORMAT, end_blocks=False)

    cartd, error, _ = run(scene, specs, body)
    error = expect_error(error, ManifestError)
    assert isinstance(error, ManifestError) and error.missing == [TARGET.path]
    scene.check_outside_untouched()
    scene.check_download_dir(specs, placed=[LEGIT])
    check_deleted(cartd)


def test_connection_dropped_mid_member_every_time(scene: Scene) -> None:
    """The server announces the full length but drops the connection mid-member on every GET."""
    specs = [LEGIT, BIG_TARGET]
    # The tar's top folder is the filename asked for, "data".
    cartd, error, _ = run(scene, specs, lambda uid, top: _two_files(top), close_after=_cut_inside_target_data("data"))
    error = expect_error(error, TransferError)
    assert cartd.count("GET") == 2
    assert not (scene.data / BIG_TARGET.path).exists()
    scene.check_outside_untouched()
    scene.check_download_dir(specs, placed=[LEGIT])
    check_deleted(cartd)


def test_connection_dropped_once_then_whole(scene: Scene) -> None:
    """A stream dropped mid-member is fetched again, and the second, whole stream completes the download."""
    specs = [LEGIT, BIG_TARGET]
    cartd, error, result = run(
        scene, specs, lambda uid, top: _two_files(top), close_after=[_cut_inside_target_data("data"), None]
    )
    assert error is None, f"the download failed: {error!r}"
    assert result == [str(scene.data / spec.path) for spec in specs]
    assert cartd.count("GET") == 2
    scene.check_outside_untouched()
    scene.check_download_dir(specs, placed=specs)
    check_deleted(cartd)


NOT_TARS = {
    "empty": lambda uid, top: b"",
    "html": lambda uid, top: b"<html><body><h1>502 Bad Gateway</h1></body></html>\n",
    "json-error": lambda uid, top: b'{"message": "internal error", "status": "error"}' * 40,
    "binary-noise": lambda uid, top: bytes(range(256)) * 16,
    "gzipped-tar": lambda uid, top: gzip.compress(_two_files(top)),
    "zero-blocks-only": lambda uid, top: b"\0" * 10240,
}


@pytest.mark.parametrize("name", sorted(NOT_TARS))
def test_body_is_not_a_tar(scene: Scene, name: str) -> None:
    """A body that is not a plain tar is reported as a typed error with every file missing; nothing is written."""
    specs = [LEGIT, TARGET]
    cartd, error, _ = run(scene, specs, NOT_TARS[name])
    error = expect_error(error, ManifestError)
    assert isinstance(error, ManifestError)
    assert sorted(error.missing) == sorted(spec.path for spec in specs)
    scene.check_outside_untouched()
    scene.check_download_dir(specs)
    check_deleted(cartd)


# -- positive controls: the harness accepts honest carts -------------------------------------


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("top_is_uid", [False, True], ids=["top-filename", "top-uid"])
def test_honest_cart_downloads(scene: Scene, fmt: str, top_is_uid: bool) -> None:
    """Control: an honest tar (folder entries included, long names) downloads and verifies."""
    deep = Spec(DEEP, "z.bin", bytes(range(256)) * 300)
    specs = [LEGIT, TARGET, deep]

    def body(uid: str, top: str) -> bytes:
        top = uid if top_is_uid else top
        return build_tar(
            [special(top, tarfile.DIRTYPE), special(top + "/a", tarfile.DIRTYPE)]
            + [reg(top + "/" + spec.path, spec.content) for spec in specs],
            FORMATS[fmt],
        )

    cartd, error, result = run(scene, specs, body)
    assert error is None, f"the download failed: {error!r}"
    assert result == [str(scene.data / spec.path) for spec in specs]
    assert cartd.methods()[:2] == ["POST", "HEAD"]
    assert [entry["path"] for entry in cartd.requests_for("POST")[0].json()["fileids"]] == [s.path for s in specs]
    assert cartd.requests_for("GET")[0].filename == "data"
    scene.check_outside_untouched()
    scene.check_download_dir(specs, placed=specs)
    check_deleted(cartd)


# -- what was already in the download directory ------------------------------------------------


@pytest.mark.parametrize(
    "link,target_kind,spec",
    [
        ("data/a", "absolute", TARGET),
        ("data/a", "relative", TARGET),
        ("data/a/b", "absolute", TARGET),
        ("data", "absolute", TARGET),
        ("data/a", "absolute", Spec("a", "x.txt", b"one level\n")),
    ],
    ids=["data-a-abs-deeper-file", "data-a-rel-deeper-file", "data-a-b-abs", "data-abs", "data-a-abs-direct-file"],
)
def test_preexisting_folder_symlink_pointing_outside(scene: Scene, link: str, target_kind: str, spec: Spec) -> None:
    """A folder symlink already in the download directory must not carry a download (or a mkdir) outside."""
    path = scene.dl / link
    path.parent.mkdir(parents=True, exist_ok=True)
    depth = link.count("/") + 1  # from the link's folder up to tmp
    path.symlink_to(str(scene.outside) if target_kind == "absolute" else "../" * depth + "outside")
    scene.preexisting.add(link)
    specs = [spec]

    def body(uid: str, top: str) -> bytes:
        return build_tar([reg(top + "/" + spec.path, spec.content)], tarfile.PAX_FORMAT)

    cartd, error, _ = run(scene, specs, body)
    expect_error(error, (UnsafeArchiveError, DestinationError))
    assert path.is_symlink()
    scene.check_outside_untouched()
    scene.check_download_dir(specs)
    assert cartd.count("POST") == 0, "the link is found while checking what is on disk, before any cart"


def test_preexisting_symlink_at_final_name_is_replaced_not_followed(scene: Scene) -> None:
    """A symlink sitting at a file's final name is replaced by the verified file; its target is untouched."""
    final = scene.data / TARGET.path
    final.parent.mkdir(parents=True)
    final.symlink_to(scene.sentinel)
    specs = [TARGET]
    cartd, error, _ = run(scene, specs, _honest(specs))
    assert error is None, f"the download failed: {error!r}"
    assert not final.is_symlink() and final.read_bytes() == TARGET.content
    scene.check_outside_untouched()
    scene.check_download_dir(specs, placed=specs)
    check_deleted(cartd)


def test_preexisting_hardlink_at_final_name_is_replaced_not_written_through(scene: Scene) -> None:
    """A hard link to an outside file at a final name is replaced, never written in place."""
    final = scene.data / TARGET.path
    final.parent.mkdir(parents=True)
    os.link(scene.sentinel, final)
    specs = [TARGET]
    cartd, error, _ = run(scene, specs, _honest(specs))
    assert error is None, f"the download failed: {error!r}"
    assert final.read_bytes() == TARGET.content
    assert os.lstat(final).st_ino != os.lstat(scene.sentinel).st_ino
    scene.check_outside_untouched()
    scene.check_download_dir(specs, placed=specs)
    check_deleted(cartd)


def test_preexisting_staging_symlink_pointing_outside(scene: Scene) -> None:
    """A ``.pacifica-downloader`` symlink to an outside folder must not make staging happen (or clean up) there."""
    decoy = scene.outside / "staging-{}-{}-deadbeef0000".format(socket.gethostname().replace("-", "_"), 2**22 + 7)
    decoy.mkdir()
    (decoy / "keep.txt").write_bytes(b"not the downloader's\n")
    (scene.dl / STAGING).symlink_to(scene.outside)
    scene.preexisting.add(STAGING)
    specs = [TARGET]
    cartd, error, _ = run(scene, specs, _honest(specs))
    if error is not None:
        assert isinstance(error, (DestinationError, UnsafeArchiveError)), f"untyped error: {error!r}"
    scene.check_outside_untouched()
    assert (decoy / "keep.txt").read_bytes() == b"not the downloader's\n"
    scene.check_download_dir(specs, placed=[] if error is not None else specs)
    if cartd.count("POST"):
        check_deleted(cartd)


# -- replacing existing files ----------------------------------------------------------------


def _existing(scene: Scene, spec: Spec, content: bytes) -> os.stat_result:
    final = scene.data / spec.path
    final.parent.mkdir(parents=True, exist_ok=True)
    final.write_bytes(content)
    os.utime(final, ns=(FROZEN_NS, FROZEN_NS))
    return os.lstat(final)


def test_existing_different_file_is_replaced_with_verified_content(scene: Scene) -> None:
    """An existing file with other content is atomically replaced by the verified download."""
    _existing(scene, TARGET, b"old content\n")
    specs = [LEGIT, TARGET]
    cartd, error, _ = run(scene, specs, _honest(specs))
    assert error is None, f"the download failed: {error!r}"
    assert (scene.data / TARGET.path).read_bytes() == TARGET.content
    scene.check_outside_untouched()
    scene.check_download_dir(specs, placed=specs)
    check_deleted(cartd)


def test_existing_file_survives_integrity_error(scene: Scene) -> None:
    """When the new content fails its hash the old file keeps its content, inode and mtime."""
    before = _existing(scene, TARGET, b"old content\n")
    specs = [LEGIT, TARGET]

    def body(uid: str, top: str) -> bytes:
        return build_tar(
            [reg(top + "/" + LEGIT.path, LEGIT.content), reg(top + "/" + TARGET.path, b"tampered\n")],
            tarfile.PAX_FORMAT,
        )

    cartd, error, _ = run(scene, specs, body)
    error = expect_error(error, IntegrityError)
    assert isinstance(error, IntegrityError) and error.path == TARGET.path
    final = scene.data / TARGET.path
    after = os.lstat(final)
    assert final.read_bytes() == b"old content\n"
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (scene.data / LEGIT.path).read_bytes() == LEGIT.content
    scene.preexisting.add("data/" + TARGET.path)
    scene.check_outside_untouched()
    scene.check_download_dir(specs, placed=[LEGIT])
    check_deleted(cartd)


def test_overwrite_false_refuses_before_any_request(scene: Scene) -> None:
    """With overwrite=False an existing different file raises DestinationError before any POST; nothing moves."""
    before = _existing(scene, TARGET, b"old content\n")
    specs = [LEGIT, TARGET]
    cartd, error, _ = run(scene, specs, _honest(specs), downloader_kwargs={"overwrite": False})
    error = expect_error(error, DestinationError)
    assert isinstance(error, DestinationError) and error.path == str(scene.data / TARGET.path)
    assert cartd.requests == [], f"requests were sent: {cartd.methods()}"
    final = scene.data / TARGET.path
    after = os.lstat(final)
    assert final.read_bytes() == b"old content\n"
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not (scene.data / LEGIT.path).exists()
    assert incoming_leftovers(scene.dl) == []
    scene.preexisting.add("data/" + TARGET.path)
    scene.check_outside_untouched()
    scene.check_download_dir(specs)


def test_overwrite_false_with_identical_file_makes_no_cart(scene: Scene) -> None:
    """With overwrite=False a file already present with the right content is kept and no cart is made."""
    _existing(scene, TARGET, TARGET.content)
    specs = [TARGET]
    cartd, error, result = run(scene, specs, lambda uid, top: b"", downloader_kwargs={"overwrite": False})
    assert error is None, f"the download failed: {error!r}"
    assert result == [str(scene.data / TARGET.path)]
    assert cartd.requests == []
    scene.check_outside_untouched()
    scene.check_download_dir(specs, placed=specs)
