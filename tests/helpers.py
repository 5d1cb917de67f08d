"""Small helpers shared by the test modules."""
from __future__ import annotations

from pathlib import Path

from pacifica.downloader.staging import STAGING_DIR
from pacifica.downloader.verified import INDEX_NAME


def staging_leftovers(location: Path) -> list[str]:
    """What a finished download left in its hidden folder besides the verified-file index: should be nothing."""
    hidden = location / STAGING_DIR
    if hidden.is_symlink():
        return [str(hidden)]
    if not hidden.exists():
        return []
    return sorted(path.name for path in hidden.iterdir() if not path.name.startswith(INDEX_NAME))


def is_index_file(location: Path, path: Path) -> bool:
    """True for the verified-file index (and its SQLite journal) inside ``location``'s hidden folder."""
    return path.parent == location / STAGING_DIR and path.name.startswith(INDEX_NAME)
