"""What a download must fetch: the decision, kept apart from the doing (as pooch's ``download_action``).

:func:`plan_download` looks at each requested file's final name before any
request: a file already there with the right content is *present* (trusted
from the verified-file index when unchanged since it was verified, else
hashed); any other is to be *fetched*, and, when the caller may not replace
files (``overwrite=False``), one holding other content is a *conflict*.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._hashing import file_digest
from ._incoming import safe_folder
from ._records import FileRecord
from ._verified import VerifiedIndex


@dataclass(frozen=True)
class Plan:
    """The files of a download sorted by what must be done with them.

    ``fetch``: absent, or present with other content (replaced once the new
    one is verified); ``present``: already in place with the right content;
    ``conflicts``: final paths with other content that may not be replaced.

    >>> Plan(fetch=[], present=[], conflicts=[]).fetch
    []
    """

    fetch: list[FileRecord]
    present: list[FileRecord]
    conflicts: list[str]


def plan_download(
    records: list[FileRecord], root: Path, folder: str, index: VerifiedIndex, *, overwrite: bool, trust_verified: bool
) -> Plan:
    """Decide, for each record, whether its file under ``root/folder`` is present, to fetch, or a conflict.

    Files found right by hashing are recorded in ``index``, so the next run
    trusts them without reading them again.  Nothing else is written, and
    no folder is created: a missing folder means a missing file.
    """
    fetch: list[FileRecord] = []
    present: list[FileRecord] = []
    conflicts: list[str] = []
    confirmed: list[tuple[str, Path, str, str]] = []
    for record in records:
        subdir, _, name = record.path.rpartition("/")
        parent = safe_folder(root, f"{folder}/{subdir}", create=False)
        final = root / folder / record.path
        key = f"{folder}/{record.path}"
        if parent is not None and trust_verified and index.is_verified(key, final, record.hashtype, record.hashsum):
            present.append(record)
            continue
        digest = None if parent is None else file_digest(parent / name, record.hashtype)
        if digest == record.hashsum:
            confirmed.append((key, final, record.hashtype, record.hashsum))
            present.append(record)
            continue
        if not overwrite and (digest is not None or final.is_symlink()):
            conflicts.append(str(final))
        fetch.append(record)
    index.remember(confirmed)
    return Plan(fetch=fetch, present=present, conflicts=conflicts)
