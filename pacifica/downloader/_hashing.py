"""Hashes: which algorithms a download may name, a new hash object, the digest of a file already on disk.

Every file is checked against the ``hashtype`` and ``hashsum`` its event
gives: while it streams (:func:`new_hash`, fed by :mod:`.extract`) and, for a
file found in place before a download, by reading it (:func:`file_digest`).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from ._exceptions import os_error

#: Algorithms whose digest has a fixed length; SHAKE needs a length and Cartd
#: cannot check it, so it is refused.
_FIXED_DIGESTS = frozenset(name for name in hashlib.algorithms_available if not name.lower().startswith("shake"))
#: Bytes per read when hashing a file already on disk.
HASH_CHUNK = 1024 * 1024


def check_hashtype(hashtype: Any) -> str:
    """Return ``hashtype`` lower-cased if :mod:`hashlib` and Cartd can both use it, else raise ``ValueError``.

    >>> check_hashtype("SHA256")
    'sha256'
    """
    if not isinstance(hashtype, str) or hashtype.lower() not in _FIXED_DIGESTS:
        raise ValueError("unknown hashtype {!r}; use one of: {}".format(hashtype, ", ".join(sorted(_FIXED_DIGESTS))))
    return hashtype.lower()


def hex_length(hashtype: str) -> int:
    """How many hex digits a ``hashtype`` digest has (``hashtype`` checked by :func:`check_hashtype`)."""
    return 2 * hashlib.new(hashtype).digest_size


def new_hash(hashtype: str) -> Any:
    """A new hash object for ``hashtype`` (checked by :func:`check_hashtype`), via its fast named constructor."""
    if hashtype in hashlib.algorithms_guaranteed and callable(getattr(hashlib, hashtype, None)):
        return getattr(hashlib, hashtype)()
    return hashlib.new(hashtype)


def file_digest(path: Path, hashtype: str) -> str | None:
    """Return the hex digest of the regular file at ``path``, or None if there is none (or a link)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with open(path, "rb", buffering=0) as handle:
            digest = new_hash(hashtype)
            buffer = bytearray(HASH_CHUNK)
            view = memoryview(buffer)
            while True:
                count = handle.readinto(buffer)
                if not count:
                    return str(digest.hexdigest())
                digest.update(view[:count])
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise os_error(err, str(path), "read the existing file") from err
