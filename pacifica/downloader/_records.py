"""The file records a cart is made of, and the rules that make them safe.

A :class:`FileRecord` is one archived file to fetch: its archive id, the
relative POSIX path it will have inside the download, and the hash it must
match.  :func:`validate_records` turns raw records (from an event or a policy
document) into checked ``FileRecord`` values, or raises one
:class:`~pacifica.downloader._exceptions.InvalidInputError` listing every bad
record, so that no request is ever sent for input that cannot succeed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Callable

from ._exceptions import InvalidInputError
from ._hashing import check_hashtype, hex_length

_HEX = re.compile(r"[0-9a-fA-F]+")
#: Archive ids end up in a URL path on the archive interface.
_ID = re.compile(r"[^/\\?#\s\x00]+")
#: Longest file or folder name most filesystems take, in bytes.
NAME_MAX = 255
#: Longest relative path accepted, in bytes, leaving room under PATH_MAX for the location.
PATH_LIMIT = 3072


@dataclass(frozen=True)
class FileRecord:
    """One file to download: archive ``id``, relative ``path``, ``hashtype``, ``hashsum``.

    ``path`` is a normalised relative POSIX path (no ``.``/``..`` parts, no
    leading ``/``); ``hashsum`` is lower-case hex; ``size`` is the expected
    size in bytes when the source document gave one.

    >>> FileRecord(id="34", path="a/b/foo.txt", hashtype="sha1", hashsum="f1d2...").cart_entry()["path"]
    'a/b/foo.txt'
    """

    id: str
    path: str
    hashtype: str
    hashsum: str
    size: int | None = None

    def cart_entry(self) -> dict[str, str]:
        """Return the record as Cartd's ``fileids`` entry."""
        return {"id": self.id, "path": self.path, "hashtype": self.hashtype, "hashsum": self.hashsum}


def join_path(subdir: Any, name: Any) -> str:
    """Join ``subdir`` and ``name`` as POSIX paths: ``("a/b/", "x") -> "a/b/x"``, ``("", "x") -> "x"``.

    Raises ``ValueError`` saying why when the result would be absolute, climb
    with ``..``, contain a NUL byte, or name no file.
    """
    if subdir is None:
        subdir = ""
    if not isinstance(subdir, str):
        raise ValueError(f"'subdir' must be a string, not {type(subdir).__name__}")
    if not isinstance(name, str) or not name:
        raise ValueError("'name' must be a non-empty string")
    if "\x00" in subdir or "\x00" in name:
        raise ValueError("the path contains a NUL byte")
    try:
        (subdir + name).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the path is not valid Unicode (it holds a lone surrogate)") from None
    if subdir.startswith("/") or (not subdir and name.startswith("/")):
        raise ValueError(f"the path {subdir or name!r} is absolute")
    if all(part in ("", ".") for part in name.split("/")):
        raise ValueError("the path names no file")
    parts: list[str] = []
    for part in (subdir + "/" + name).split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise ValueError("the path {!r} climbs out with '..'".format(subdir.rstrip("/") + "/" + name))
        if len(part.encode("utf-8")) > NAME_MAX:
            raise ValueError(f"the path has a part longer than {NAME_MAX} bytes")
        parts.append(part)
    joined = "/".join(parts)
    if len(joined.encode("utf-8")) > PATH_LIMIT:
        raise ValueError(f"the path is longer than {PATH_LIMIT} bytes")
    return joined


def check_folder_name(filename: Any) -> str:
    """Check the ``filename`` argument (the folder the files land in) is one plain path component."""
    if (
        not isinstance(filename, str)
        or filename in ("", ".", "..")
        or "/" in filename
        or "\x00" in filename
        or filename.replace(".tar", "") in ("", ".", "..")
    ):
        raise InvalidInputError("filename must be one plain folder name such as 'data'", [f"filename={filename!r}"])
    return filename


def _check_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"'_id' must be an integer or a string, not {type(value).__name__}")
    text = str(value)
    if not _ID.fullmatch(text):
        raise ValueError(f"'_id' {value!r} cannot name an archived file")
    return text


def _check_size(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("'size' must be a non-negative integer")
    return value


def record_from_metadata(obj: Any, file_id: Any = None) -> FileRecord:
    """Build a :class:`FileRecord` from one Pacifica ``Files`` metadata object.

    ``obj`` has ``_id``, ``name``, ``subdir``, ``hashtype``, ``hashsum`` and
    optionally ``size``; ``file_id`` stands in for a missing ``_id`` (policy
    documents key their files by id).  Raises ``ValueError`` naming every
    problem found in the object.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"a file record must be an object, not {type(obj).__name__}")
    problems: list[str] = []
    missing = [key for key in ("name", "hashtype", "hashsum") if key not in obj]
    if "_id" not in obj and file_id is None:
        missing.insert(0, "_id")
    if missing:
        problems.append("missing {}".format(", ".join(repr(key) for key in missing)))
    values: dict[str, Any] = {}
    checks: list[tuple[str, Any]] = [
        ("id", lambda: _check_id(obj.get("_id", file_id))),
        ("path", lambda: join_path(obj.get("subdir", ""), obj["name"])),
        ("hashtype", lambda: check_hashtype(obj["hashtype"])),
        ("size", lambda: _check_size(obj.get("size"))),
    ]
    for field, check in checks:
        try:
            values[field] = check()
        except KeyError:
            pass  # already reported as missing
        except ValueError as err:
            problems.append(str(err))
    hashsum = obj.get("hashsum")
    if "hashsum" in obj:
        if not isinstance(hashsum, str) or not _HEX.fullmatch(hashsum):
            problems.append("'hashsum' must be a hex string")
        elif "hashtype" in values and len(hashsum) != hex_length(values["hashtype"]):
            problems.append(
                "'hashsum' has {} hex digits, a {} digest has {}".format(
                    len(hashsum), values["hashtype"], hex_length(values["hashtype"])
                )
            )
    if "id" in values and file_id is not None and "_id" in obj and str(file_id) != values["id"]:
        problems.append("'_id' {!r} differs from its key {!r}".format(obj["_id"], file_id))
    if problems:
        raise ValueError("; ".join(problems))
    return FileRecord(
        id=values["id"],
        path=values["path"],
        hashtype=values["hashtype"],
        hashsum=str(hashsum).lower(),
        size=values["size"],
    )


def validate_records(labelled: Iterable[tuple[str, Any]], what: str = "records") -> list[FileRecord]:
    """Check every record, then the set as a whole; return them or raise one error listing all problems.

    ``labelled`` yields ``(label, record)`` pairs; a record is either a
    :class:`FileRecord`, a Pacifica ``Files`` object, or a Cartd ``fileids``
    entry (``id``, ``path``, ``hashtype``, ``hashsum``).  The label says
    where the record came from (``"data[7]"``) so the error can point at it.
    Two records with one path, or a path that is also another's folder, are
    refused: they would overwrite each other.
    """
    records: list[FileRecord] = []
    problems: list[str] = []
    for label, raw in labelled:
        try:
            records.append(_coerce(raw))
        except ValueError as err:
            problems.append(f"{label} ({_describe(raw)}): {err}")
    seen: dict[str, FileRecord] = {}
    for record in records:
        if record.path in seen:
            problems.append(f"path {record.path!r} is requested twice")
        seen[record.path] = record
    for record in records:
        parent = record.path.rpartition("/")[0]
        while parent:
            if parent in seen:
                problems.append(f"path {parent!r} is both a file and a folder")
                break
            parent = parent.rpartition("/")[0]
    if problems:
        raise InvalidInputError(f"the {what} cannot be downloaded", problems)
    return records


@dataclass(frozen=True)
class Keyed:
    """A metadata object together with the key it was filed under (policy documents key files by id)."""

    obj: Any
    key: Any


def _coerce(raw: Any) -> FileRecord:
    if isinstance(raw, Keyed):
        return record_from_metadata(raw.obj, file_id=raw.key)
    if isinstance(raw, FileRecord):
        # Built by a caller: check it like any other input.
        checked = _coerce(raw.cart_entry())
        return FileRecord(checked.id, checked.path, checked.hashtype, checked.hashsum, _check_size(raw.size))
    if isinstance(raw, dict) and "path" in raw and "name" not in raw:
        # A Cartd ``fileids`` entry, as CartAPI.setup_cart callables yield.
        path = raw.get("path")
        if not isinstance(path, str):
            raise ValueError("'path' must be a string")
        if path.startswith("/"):
            raise ValueError(f"the path {path!r} is absolute")
        subdir, _, name = path.rpartition("/")
        return record_from_metadata(
            {
                "_id": raw.get("id"),
                "subdir": subdir,
                "name": name,
                "hashtype": raw.get("hashtype"),
                "hashsum": raw.get("hashsum"),
            }
        )
    return record_from_metadata(raw)


def _describe(raw: Any) -> str:
    if isinstance(raw, dict):
        for key in ("name", "path", "_id", "id"):
            if isinstance(raw.get(key), (str, int)):
                return f"{key}={raw[key]!r}"
    return type(raw).__name__


def total_size(records: Iterable[Any]) -> int | None:
    """The bytes of ``records`` (anything with a ``size``) together; None when any size is unknown."""
    sizes = [record.size for record in records]
    return None if None in sizes else sum(size for size in sizes if size is not None)


def entries_callable(records: list[FileRecord]) -> Callable[[], Iterator[dict[str, str]]]:
    """Return a callable yielding ``records`` as Cartd ``fileids`` entries (what ``setup_cart`` takes)."""

    def yield_files() -> Iterator[dict[str, str]]:
        for record in records:
            yield record.cart_entry()

    return yield_files
