"""The modes of what the library creates in the download area: never writable by others, whatever the umask.

A download area is often shared storage.  A file or folder others could
write to would let them change verified data, plant a link where a file is
about to land, or rewrite the records of carts to delete.  So every file is
created with :data:`FILE_MODE` and every folder with :data:`FOLDER_MODE`,
which the process's umask can only narrow: the owner (and the group, if the
umask allows) may write, others never.  Nothing written holds a secret.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

#: Files: read and write for the owner and the group, read for others (less, as the umask says).
FILE_MODE = 0o664
#: Folders: the same, with the search bit.
FOLDER_MODE = 0o775
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


def make_folders(path: Path) -> None:
    """Create ``path`` and any missing parent, each with :data:`FOLDER_MODE` (``mkdir -p`` gives parents 0777)."""
    missing = []
    current = path
    while not current.exists() and current.parent != current:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        folder.mkdir(mode=FOLDER_MODE, exist_ok=True)


def open_append(path: Path) -> IO[str]:
    """Open the text file ``path`` to append to, created with :data:`FILE_MODE` if missing."""
    return os.fdopen(os.open(path, _APPEND_FLAGS, FILE_MODE), "a", encoding="utf-8")
