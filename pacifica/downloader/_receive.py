"""Read a cart's tar as untrusted input: verify each file while it streams, write only what was asked.

:class:`CartReceiver` walks the tar one header at a time with its own
reader (:mod:`.tarheaders`; :mod:`tarfile` is not used: its extraction
filters have been bypassed, some Pythons have none, and it costs a large share of
a many-small-files transfer).  The rules:

* only regular files and folders are accepted; links, devices, FIFOs and
  sparse files are refused with :class:`UnsafeArchiveError`;
* a name must be the cart's top folder followed by a requested path; an
  absolute name, a ``..`` part or a NUL is refused;
* a requested file's bytes are hashed while they are written to the incoming
  area, and only a file whose digest matches is moved to its final name; a
  file that is not requested, or comes twice, is a :class:`ManifestError`;
* file modes from the archive are ignored: files get the process's default
  permissions, so no setuid, setgid or sticky bit ever survives.

A cart whose files are not known (``wanted=None``: a cart URL handed to the
released ``_download_from_url`` that this process did not create) is held to
the same rules but one: any regular file below the top folder is taken, and
there is no hash to check it against.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Generator, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from ._exceptions import IntegrityError, MalformedTar, ManifestError, StreamBroken, UnsafeArchiveError, os_error
from ._hashing import new_hash
from ._incoming import IncomingArea, usable_mtime
from ._records import FileRecord, join_path
from ._stream import CartStream
from ._tarheaders import TarMember, TarReader

LOGGER = logging.getLogger(__name__)


def _split_name(member: TarMember, tops: Iterable[str]) -> tuple[str, str]:
    """Return the member's top folder and its path below it ('' for the top itself); refuse unsafe names."""
    name = member.name
    if "\x00" in name or name.startswith("/") or "\\" in name.split("/")[0]:
        raise UnsafeArchiveError(f"the tar entry {name!r} has an absolute or malformed name")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"the tar entry {name!r} climbs out with '..'")
    if not parts or parts[0] not in tops:
        raise UnsafeArchiveError(
            "the tar entry {!r} is not inside the cart's folder ({})".format(name, " or ".join(sorted(tops)))
        )
    return parts[0], "/".join(parts[1:])


class Placed(NamedTuple):
    """A file placed: its ``record`` (None for a file of a cart whose files are not known: not verified) and
    the ``path`` it now has."""

    record: FileRecord | None
    path: str


class CartReceiver:
    """Receives one cart's tar into ``destination``, verifying every file; owns what is placed across tries.

    ``wanted`` maps each requested relative path to its record (None: the
    cart's files are not known; every regular file is taken, unverified);
    ``tops`` are the acceptable names of the tar's top folder (the
    ``filename`` asked for, or the cart's id when Cartd bundles); ``done``
    the paths already in place, whose bytes are skipped.  :meth:`receive`
    reads each try's stream and yields its progress to the caller, who
    decides what to do with it (it calls nothing back): the number of bytes
    of each piece written, and a :class:`Placed` for each file placed.  A
    try that broke leaves in :attr:`done` what it placed, and the next
    skips it.

    >>> receiver = CartReceiver(wanted, {"data"}, destination, incoming)   # doctest: +SKIP
    >>> for step in receiver.receive(stream): ...                           # doctest: +SKIP
    """

    def __init__(
        self,
        wanted: Mapping[str, FileRecord] | None,
        tops: set[str],
        destination: Path,
        incoming: IncomingArea,
        done: Iterable[str] = (),
    ) -> None:
        """Prepare to receive the cart; see the class docstring."""
        self.wanted = wanted
        self.tops = tops
        self.destination = destination
        self.incoming = incoming
        self.done: set[str] = set(done)
        self._folders = _folders(wanted)

    def receive(self, stream: CartStream) -> Generator[int | Placed, None, None]:
        """Read one try's stream to its end, placing each verified file; raise if the cart is not exactly right.

        Yields the size of each piece written and a :class:`Placed` for each file placed.

        Raises :class:`StreamBroken` when the connection broke and the stream
        must start over, and the library's typed errors for everything else.
        """
        wanted, done = self.wanted, self.done
        top_seen: str | None = None
        received: set[str] = set()
        reader = TarReader(stream)
        while True:
            try:
                member = reader.next()
            except MalformedTar as err:
                if err.first:
                    lost = sorted(set(wanted or ()) - done)
                    raise ManifestError(
                        f"the cart's stream held no tar ({err}); {len(lost) or 'its'} files are missing", missing=lost
                    ) from None
                raise UnsafeArchiveError(f"the cart's tar is malformed: {err}") from None
            if member is None:
                break
            # Every entry must share the first entry's top folder.
            top_seen, relative = _split_name(member, {top_seen} if top_seen else self.tops)
            if member.isdir:
                if relative and self._folders is not None and relative not in self._folders:
                    raise ManifestError(
                        f"the cart holds a folder nobody asked for: {relative!r}", unexpected=[relative]
                    )
                continue
            if not member.isfile:
                raise UnsafeArchiveError(
                    f"the tar entry {member.name!r} is a {member.kind}, not a regular file; refused"
                )
            record = None if wanted is None else wanted.get(relative)
            if wanted is not None and record is None:
                raise ManifestError(f"the cart holds a file nobody asked for: {relative!r}", unexpected=[relative])
            if relative in received:
                raise ManifestError(f"the cart holds {relative!r} twice", duplicated=[relative])
            received.add(relative)
            if relative in done:
                continue  # verified and placed by an earlier attempt; the reader skips its bytes
            final = yield from _receive(
                stream,
                member,
                record or _unlisted(relative),
                self.destination,
                self.incoming,
                verify=record is not None,
            )
            done.add(relative)
            yield Placed(record, final)
        missing = [] if wanted is None else sorted(set(wanted) - done)
        if missing:
            raise ManifestError(
                f"the cart's stream ended without {len(missing)} of the {len(wanted or ())} files requested "
                f"(first: {missing[0]!r})",
                missing=missing,
            )


def _folders(wanted: Mapping[str, FileRecord] | None) -> set[str] | None:
    """Every folder the requested files need (None: any folder, when the files are not known)."""
    if wanted is None:
        return None
    folders = {record.path.rpartition("/")[0] for record in wanted.values()}
    for folder in list(folders):
        while folder:
            folder = folder.rpartition("/")[0]
            folders.add(folder)
    return folders


def _unlisted(relative: str) -> FileRecord:
    """A record for a file of a cart whose files are not known: its path checked as an event's would be."""
    subdir, _, name = relative.rpartition("/")
    try:
        path = join_path(subdir, name)
    except ValueError as err:
        raise UnsafeArchiveError(f"the tar entry {relative!r} cannot be written: {err}") from None
    return FileRecord(id="", path=path, hashtype="sha256", hashsum="")


def _receive(
    stream: CartStream,
    member: TarMember,
    record: FileRecord,
    destination: Path,
    incoming: IncomingArea,
    verify: bool = True,
) -> Generator[int, None, str]:
    """Copy one member into an incoming file while hashing it; place it if the digest matches; return its path.

    Yields the size of each piece written.

    The member's bytes are read straight from the stream, as views of the
    received chunks, and go to the hash and to the file without a copy;
    the reader skips the padding after them on its next header.  With
    ``verify=False`` nothing is hashed: no digest is known to compare with.
    """
    digest = new_hash(record.hashtype) if verify else None
    target = incoming.prepare(destination, record.path)
    pending, fd = incoming.create_file(target)
    final = os.path.join(target.folder, record.path.rpartition("/")[2])
    received = 0
    try:
        try:
            try:
                for piece in stream.pieces(member.size):
                    if digest is not None:
                        digest.update(piece)
                    _write_all(fd, piece)
                    received += len(piece)
                    yield len(piece)
            finally:
                os.close(fd)
        except OSError as err:
            raise os_error(err, final, "write") from err
        if received < member.size:
            raise StreamBroken(
                f"the stream ended inside {record.path!r} ({received} of {member.size} bytes)", stream.tell()
            )
        actual = record.hashsum if digest is None else digest.hexdigest()
        if actual != record.hashsum:
            raise IntegrityError(
                f"{record.path} does not match its {record.hashtype} hash: "
                f"expected {record.hashsum}, received {actual}; it was not saved",
                path=record.path,
                expected=record.hashsum,
                actual=actual,
            )
        incoming.place(pending, final, mtime=usable_mtime(member.mtime))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pending)
        raise
    return final


def _write_all(fd: int, data: memoryview) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less, e.g. when interrupted)."""
    written = os.write(fd, data)
    while written < len(data):
        written += os.write(fd, data[written:])
