"""The manifest of a finished download: what each file is, as JSON-ready values."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ._records import FileRecord


def manifest(records: Sequence[FileRecord], paths: Sequence[str]) -> list[dict[str, Any]]:
    """One ``{"path", "size", "hashtype", "hashsum"}`` per file, in input order (``paths`` as returned)."""
    return [
        {
            "path": os.path.abspath(path),
            "size": os.stat(path).st_size,
            "hashtype": record.hashtype,
            "hashsum": record.hashsum,
        }
        for record, path in zip(records, paths)
    ]
