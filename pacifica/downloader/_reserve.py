"""Empty incoming files created ahead of their use, by a background thread.

Creating a file is the dearest step of writing a small one on common
filesystems: the ``open(O_CREAT)`` alone can cost more kernel time than
writing 64 KiB into it (see ``benchmarks/README.md``).  The kernel does that
work without holding the GIL, so a thread that creates the next files while
the extracting thread parses headers, hashes and writes overlaps the two.

Only files that were promised are created, at most ``ahead`` before they are
taken; a file created but never taken stays empty in the incoming area and
goes when the area is removed.

Creating a file and moving one out of a folder both lock that folder: with
one folder, each move of a verified file waited for the creation under way.  So files are made in turn in
``ahead // block + 1`` subfolders, ``block`` at a time: the file being moved
out and the one being made ``ahead`` later are never in the same folder.
"""
from __future__ import annotations

import collections
import logging
import os
import threading

from ._permissions import FOLDER_MODE

LOGGER = logging.getLogger(__name__)


class FileReserve:
    """New, empty files in subfolders of ``folder``, created ahead by a thread; see the module docstring.

    ``flags`` and ``mode`` are passed to :func:`os.open`.  :meth:`take` hands out a created file's path and open
    descriptor, or None when none is ready (the caller then creates its own:
    an error, such as a full disk, is raised by that call, never by the
    thread, which just stops).
    """

    def __init__(self, folder: str, flags: int, mode: int = 0o666, ahead: int = 64, block: int = 16) -> None:
        """Start the thread; it creates nothing until files are promised."""
        self.folder = folder
        self._block = block
        self._folders = ahead // block + 1
        self._made = 0
        self._flags = flags
        self._mode = mode
        self._ahead = ahead
        self._ready: collections.deque[tuple[str, int]] = collections.deque()
        self._promised = 0
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="pacifica-create", daemon=True)
        self._thread.start()

    def promise(self, count: int) -> None:
        """``count`` more files will be asked for."""
        with self._changed:
            self._promised += count
            self._changed.notify()

    def withdraw(self, count: int) -> None:
        """``count`` promised files will not be asked for after all."""
        with self._changed:
            self._promised = max(0, self._promised - count)

    def take(self) -> tuple[str, int] | None:
        """A created file's path and write descriptor, or None if none is ready (one promise is then used up)."""
        with self._changed:
            if self._ready:
                made = self._ready.popleft()
                self._changed.notify()
                return made
            self._promised = max(0, self._promised - 1)
            return None

    def close(self) -> None:
        """Stop the thread and close the descriptors of the files never taken (the files stay)."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join()
        while self._ready:
            os.close(self._ready.popleft()[1])

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._closed and (not self._promised or len(self._ready) >= self._ahead):
                    self._changed.wait()
                if self._closed:
                    return
                self._promised -= 1
            subfolder = f"{self.folder}/ahead-{self._made // self._block % self._folders}"
            path = f"{subfolder}/{self._made}.part"
            self._made += 1
            try:
                if self._made <= self._block * self._folders:
                    os.makedirs(subfolder, FOLDER_MODE, exist_ok=True)
                fd = os.open(path, self._flags, self._mode)
            except OSError as err:
                LOGGER.debug("stopped creating incoming files ahead: %s", err)
                return
            with self._changed:
                if self._closed:
                    os.close(fd)
                    return
                self._ready.append((path, fd))
                self._changed.notify_all()
