"""Where files are written before they are verified, and how they are put in place.

An :class:`IncomingArea` is a private folder inside the download directory
(so on the same filesystem): each file streams into it, is hashed on the
way, and only once verified is moved to its final name with
:func:`os.replace`, which is atomic.  A final name therefore holds either
what it held before or verified content, never a partial file.  The area is
removed when the download ends; one left by a killed process is removed by
the next download into the same directory.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import shutil
import socket
import stat
import threading
import uuid
from pathlib import Path
from typing import Any, NamedTuple

from ._exceptions import DestinationError, UnsafeArchiveError, os_error
from ._permissions import FILE_MODE, FOLDER_MODE

LOGGER = logging.getLogger(__name__)

#: The hidden folder, inside the download directory, that holds incoming areas.
HIDDEN_DIR = ".pacifica-downloader"
#: The first word of the name of an incoming folder left by a killed process: earlier versions said "staging".
LEFTOVER_PREFIXES = ("incoming", "staging")
#: A new incoming file: write-only, never an existing name, not inherited by child processes.
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _refuse_link(path: Path) -> None:
    raise UnsafeArchiveError(
        f"{path} is a symbolic link inside the download directory; refusing to write through it "
        "(remove the link or choose another location)"
    )


def safe_folder(root: Path, relative: str, create: bool) -> Path | None:
    """Return ``root/relative`` as a real folder, never going through a symbolic link below ``root``.

    Each part is checked with ``lstat``: a link raises
    :class:`UnsafeArchiveError`, a file in the way :class:`DestinationError`.
    A missing part is created one ``mkdir`` at a time when ``create`` is
    true; otherwise None is returned.
    """
    current = root
    for part in [part for part in relative.split("/") if part]:
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            if not create:
                return None
            try:
                os.mkdir(current, FOLDER_MODE)
            except FileExistsError:
                info = os.lstat(current)  # made by a concurrent download: check it below
            except OSError as err:
                raise os_error(err, str(current), "create the folder") from err
            else:
                continue
        except OSError as err:
            raise os_error(err, str(current), "inspect") from err
        if stat.S_ISLNK(info.st_mode):
            _refuse_link(current)
        if not stat.S_ISDIR(info.st_mode):
            raise DestinationError(
                f"cannot create the folder {current}: a file is in the way; move it or choose another location",
                path=str(current),
            )
    return current


def usable_mtime(value: Any) -> float | None:
    """Return a tar member's mtime if it is a sane timestamp (finite, 1970 to 2242), else None."""
    if isinstance(value, (int, float)) and math.isfinite(value) and 0 < value < 2**33:
        return float(value)
    return None


def hidden_folder(location: Path) -> Path:
    """Return ``location``'s hidden bookkeeping folder, created when needed; refuse one that is a link or a file."""
    root = location / HIDDEN_DIR
    try:
        root.mkdir(mode=FOLDER_MODE, exist_ok=True)
        info = os.lstat(root)
    except OSError as err:
        raise os_error(err, str(root), "create the folder") from err
    if not stat.S_ISDIR(info.st_mode):
        raise DestinationError(
            f"{root} is not a plain folder (a link or a file); remove it and run again", path=str(root)
        )
    return root


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Target(NamedTuple):
    """Where a file lands (``folder``) and the incoming folder on the same filesystem (``area``)."""

    folder: str
    area: str


class IncomingArea:
    """Private folders for files not yet verified, one per filesystem the download writes to.

    The main one is ``location/.pacifica-downloader/incoming-<host>-<pid>-<id>``.
    A folder below ``location`` that is another filesystem (a mount point)
    gets its own, in the same hidden folder at that mount's top, so that
    every verified file is moved into place by a same-filesystem rename.
    """

    def __init__(self, location: Path) -> None:
        """Create the main area; clean areas left by processes that are gone."""
        self.location = location
        self.root = hidden_folder(location)
        self._host = socket.gethostname().replace("-", "_")
        self._name = f"incoming-{self._host}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._areas: dict[int, Path] = {}
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._targets: dict[tuple[Path, str], Target] = {}
        self.path = self._area_for(location)

    def _area_for(self, folder: Path) -> Path:
        """The incoming folder on ``folder``'s filesystem, created on first use."""
        try:
            device = os.stat(folder).st_dev
            with self._lock:
                if device not in self._areas:
                    hidden = (
                        self.root
                        if device == os.stat(self.location).st_dev
                        else hidden_folder(self._mount_top(folder, device))
                    )
                    self._remove_stale(hidden)
                    area = hidden / self._name
                    area.mkdir(mode=FOLDER_MODE)
                    self._areas[device] = area
                return self._areas[device]
        except OSError as err:
            raise os_error(err, str(folder), "create an incoming folder for") from err

    def _mount_top(self, folder: Path, device: int) -> Path:
        """The highest folder between ``location`` and ``folder`` on ``device``."""
        top = folder
        while top.parent != top and top.parent != self.location and os.stat(top.parent).st_dev == device:
            top = top.parent
        return top

    def _remove_stale(self, hidden: Path) -> None:
        for entry in hidden.iterdir():
            parts = entry.name.split("-")
            if len(parts) != 4 or parts[0] not in LEFTOVER_PREFIXES or parts[1] != self._host or not parts[2].isdigit():
                continue
            if not _pid_alive(int(parts[2])):
                LOGGER.info("removing the incoming folder %s left by a process that is gone", entry)
                shutil.rmtree(entry, ignore_errors=True)

    def prepare(self, destination: Path, relative: str) -> Target:
        """Create (safely) the folder ``destination/relative`` lands in; return it with its incoming folder.

        Each folder is checked and created once per download: the carts of
        a large event put thousands of files in the same few folders.
        """
        folder = relative.rpartition("/")[0]
        target = self._targets.get((destination, folder))
        if target is None:
            parent = safe_folder(self.location, f"{destination.relative_to(self.location)}/{folder}", create=True)
            if parent is None:  # safe_folder(create=True) always returns a folder; this satisfies the type checker
                raise DestinationError(f"cannot create the folder for {relative}", path=relative)
            target = Target(str(parent), str(self._area_for(parent)))
            self._targets[(destination, folder)] = target
        return target

    def create_file(self, target: Target) -> tuple[str, int]:
        """Create a new, empty incoming file on ``target``'s filesystem; return its path and a raw descriptor."""
        path = f"{target.area}/{next(self._numbers)}.part"  # next() on a count is atomic: threads share the area
        try:
            return path, os.open(path, _CREATE_FLAGS, FILE_MODE)
        except OSError as err:
            raise os_error(err, path, "create the incoming file") from err

    def place(self, pending: str, final: str, mtime: float | None = None) -> None:
        """Move the verified ``pending`` file to ``final`` (in a folder from :meth:`prepare`) atomically."""
        try:
            if mtime is not None:
                os.utime(pending, (mtime, mtime))
            os.replace(pending, final)
        except IsADirectoryError as err:
            raise DestinationError(
                f"{final} is a folder, the cart has a file there; move it or choose another location", path=final
            ) from err
        except OSError as err:
            raise os_error(err, final, "move the verified file to") from err

    def remove(self) -> None:
        """Remove every area and what is left in it; their hidden folders too when empty."""
        for area in self._areas.values():
            shutil.rmtree(area, ignore_errors=True)
            with contextlib.suppress(OSError):  # another download is using it, or it holds the index
                area.parent.rmdir()
