"""Server-free tests of file records: path joining and record validation."""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Any

import pytest

from pacifica.downloader import FileRecord, InvalidInputError
from pacifica.downloader._hashing import check_hashtype
from pacifica.downloader._records import join_path, validate_records

SHA1 = "f1d2d2f924e986ac86fdf7b36c94bcdf32beec15"
JAPANESE_NAME = "パソコン資産管理台帳（S&T HK）_現地調達PC.xls"


def _record(**changes: Any) -> dict[str, Any]:
    """A valid Pacifica ``Files`` object, with ``changes`` applied (a value of ``...`` drops the key)."""
    record: dict[str, Any] = {
        "_id": 34,
        "name": "foo.txt",
        "subdir": "a/b/",
        "hashtype": "sha1",
        "hashsum": SHA1,
        "size": 128,
    }
    for key, value in changes.items():
        if value is ...:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def _one(**changes: Any) -> FileRecord:
    (record,) = validate_records([("data[0]", _record(**changes))])
    return record


def _refused(*records: dict[str, Any]) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        validate_records([(f"data[{index}]", record) for index, record in enumerate(records)])
    return info.value


# -- join_path ------------------------------------------------------------------


@pytest.mark.parametrize(
    "subdir, name, expected",
    [
        ("a/b/", "x", "a/b/x"),
        ("a/b", "x", "a/b/x"),
        ("", "x", "x"),
        (None, "x", "x"),
        ("a//b", "x", "a/b/x"),
        ("./a", "x", "a/x"),
        ("a/./b/", "x", "a/b/x"),
        ("a", "b/x", "a/b/x"),
        ("data/a/c", JAPANESE_NAME, "data/a/c/" + JAPANESE_NAME),
        ("日本語/フォルダ", "ファイル.txt", "日本語/フォルダ/ファイル.txt"),
        ("a", "...", "a/..."),
        ("a", "x..y", "a/x..y"),
        ("a", ".hidden", "a/.hidden"),
    ],
)
def test_join_path(subdir: Any, name: str, expected: str) -> None:
    assert join_path(subdir, name) == expected


def test_join_path_keeps_unicode_exactly() -> None:
    """No normalisation: a decomposed (NFD) name stays decomposed, a composed one composed."""
    decomposed = unicodedata.normalize("NFD", "café.txt")
    composed = unicodedata.normalize("NFC", "café.txt")
    assert decomposed != composed
    assert join_path("d", decomposed) == "d/" + decomposed
    assert join_path("d", composed) == "d/" + composed
    assert join_path("e\u0301", "x") == "e\u0301/x"


@pytest.mark.parametrize(
    "subdir, name",
    [
        ("/etc", "passwd"),
        ("/", "x"),
        ("", "/x"),
        (None, "/x"),
        ("..", "x"),
        ("a/..", "x"),
        ("a/../b", "x"),
        ("a/../..", "x"),
        ("a", ".."),
        ("a", "../x"),
        ("a", "x/.."),
        ("", "../x"),
        ("a\x00b", "x"),
        ("a", "x\x00"),
        ("a", ""),
        ("", ""),
        ("", "."),
        ("a", "."),
        ("a", "./"),
        ("a", "./."),
        ("a", "././"),
        ("a", "/"),
        ("a", None),
        ("a", 5),
        (5, "x"),
        (["a"], "x"),
    ],
)
def test_join_path_refuses(subdir: Any, name: Any) -> None:
    with pytest.raises(ValueError):
        join_path(subdir, name)


def test_join_path_reasons() -> None:
    with pytest.raises(ValueError, match="absolute"):
        join_path("/etc", "x")
    with pytest.raises(ValueError, match=r"\.\."):
        join_path("a/..", "x")
    with pytest.raises(ValueError, match="NUL"):
        join_path("a", "x\x00")


# -- hash types -------------------------------------------------------------------


@pytest.mark.parametrize("hashtype", ["sha1", "sha256", "md5", "sha512", "blake2b"])
def test_hashtypes_accepted(hashtype: str) -> None:
    digest = hashlib.new(hashtype, b"content").hexdigest()
    record = _one(hashtype=hashtype, hashsum=digest)
    assert record.hashtype == hashtype
    assert record.hashsum == digest
    assert check_hashtype(hashtype) == hashtype


def test_hashtype_case_insensitive() -> None:
    assert check_hashtype("SHA256") == "sha256"
    assert _one(hashtype="SHA1").hashtype == "sha1"


@pytest.mark.parametrize("hashtype", ["shake_128", "shake_256", "crc32", "sha-1", "", None, 1, True])
def test_hashtypes_refused(hashtype: Any) -> None:
    with pytest.raises(ValueError):
        check_hashtype(hashtype)
    error = _refused(_record(hashtype=hashtype))
    assert "unknown hashtype" in error.problems[0]


# -- validate_records ---------------------------------------------------------------


def test_valid_record() -> None:
    record = _one()
    assert record == FileRecord(id="34", path="a/b/foo.txt", hashtype="sha1", hashsum=SHA1, size=128)
    assert record.cart_entry() == {"id": "34", "path": "a/b/foo.txt", "hashtype": "sha1", "hashsum": SHA1}


def test_string_id_and_no_subdir() -> None:
    record = _one(_id="abc-34", subdir=..., size=...)
    assert (record.id, record.path, record.size) == ("abc-34", "foo.txt", None)


@pytest.mark.parametrize("key", ["_id", "name", "hashtype", "hashsum"])
def test_missing_key_reported(key: str) -> None:
    error = _refused(_record(**{key: ...}))
    assert len(error.problems) == 1
    assert "missing" in error.problems[0]
    assert repr(key) in error.problems[0]
    assert "data[0]" in error.problems[0]


def test_all_missing_keys_reported_together() -> None:
    error = _refused({"subdir": "a"})
    assert len(error.problems) == 1
    for key in ("_id", "name", "hashtype", "hashsum"):
        assert repr(key) in error.problems[0]


@pytest.mark.parametrize(
    "hashsum",
    ["z" * 40, SHA1[:-1] + "g", "0x" + SHA1[:38], SHA1[:-1], SHA1 + "0", "", " " + SHA1[1:], 40, None, [SHA1]],
)
def test_bad_hashsum_refused(hashsum: Any) -> None:
    error = _refused(_record(hashsum=hashsum))
    assert "hashsum" in error.problems[0]


@pytest.mark.parametrize(
    "hashtype, hashsum", [("sha1", SHA1[:-1] + "\n"), ("md5", hashlib.md5(b"x").hexdigest()[:-1] + "\n")]
)
def test_hashsum_with_trailing_newline_refused(hashtype: str, hashsum: str) -> None:
    """A newline is not a hex digit, wherever it is (``re``'s ``$`` also matches before a final newline)."""
    assert len(hashsum) == 2 * hashlib.new(hashtype).digest_size
    error = _refused(_record(hashtype=hashtype, hashsum=hashsum))
    assert "hashsum" in error.problems[0]


def test_hashsum_wrong_length_for_type() -> None:
    error = _refused(_record(hashtype="sha256", hashsum=SHA1))
    assert "64" in error.problems[0] and "40" in error.problems[0]


def test_hashsum_upper_case_accepted_and_lowered() -> None:
    record = _one(hashsum=SHA1.upper())
    assert record.hashsum == SHA1
    assert record.cart_entry()["hashsum"] == SHA1


@pytest.mark.parametrize("bad_id", [True, False, 34.0, 1.5, None, [34], {"id": 34}, "", "a/b", "a b", "a?b", "a#b"])
def test_bad_ids_refused(bad_id: Any) -> None:
    error = _refused(_record(_id=bad_id))
    assert "_id" in error.problems[0]


@pytest.mark.parametrize("bad_id", ["34\n", "abc\n"])
def test_id_with_trailing_newline_refused(bad_id: str) -> None:
    """Whitespace is refused in ids (they go into a URL path), a trailing newline included."""
    error = _refused(_record(_id=bad_id))
    assert "_id" in error.problems[0]


@pytest.mark.parametrize("good_id", [0, 34, 10**12, "34", "abc-DEF_1.2"])
def test_good_ids(good_id: Any) -> None:
    assert _one(_id=good_id).id == str(good_id)


@pytest.mark.parametrize("size", [-1, True, 1.5, "12"])
def test_bad_size_refused(size: Any) -> None:
    error = _refused(_record(size=size))
    assert "size" in error.problems[0]


def test_record_must_be_object() -> None:
    error = _refused("foo.txt")  # type: ignore[arg-type]
    assert "must be an object" in error.problems[0]


def test_duplicate_paths_refused() -> None:
    error = _refused(_record(_id=1, subdir="a/b/", name="x"), _record(_id=2, subdir="a/b", name="x"))
    assert any("requested twice" in problem and "a/b/x" in problem for problem in error.problems)


def test_duplicate_paths_after_normalisation_refused() -> None:
    error = _refused(_record(_id=1, subdir="./a//b", name="x"), _record(_id=2, subdir="a", name="b/x"))
    assert any("requested twice" in problem for problem in error.problems)


@pytest.mark.parametrize(
    "first, second",
    [
        ({"subdir": "", "name": "a"}, {"subdir": "a", "name": "x"}),
        ({"subdir": "a", "name": "b"}, {"subdir": "a/b/c", "name": "x"}),
        ({"subdir": "a/b/c", "name": "x"}, {"subdir": "a", "name": "b"}),
    ],
)
def test_file_and_folder_conflict_refused(first: dict[str, Any], second: dict[str, Any]) -> None:
    error = _refused(_record(_id=1, **first), _record(_id=2, **second))
    assert any("both a file and a folder" in problem for problem in error.problems)


def test_same_name_in_different_folders_is_fine() -> None:
    records = validate_records(
        [("a", _record(_id=1, subdir="a", name="x")), ("b", _record(_id=2, subdir="b", name="x"))]
    )
    assert [record.path for record in records] == ["a/x", "b/x"]


def test_one_error_lists_every_bad_record() -> None:
    good = [_record(_id=index, subdir="ok", name=f"f{index}") for index in range(3)]
    bad = {
        3: _record(_id=3, name=..., subdir="bad"),
        4: _record(_id=4, name="f4", subdir="/etc"),
        5: _record(_id=5, name="f5", subdir="bad", hashtype="shake_128"),
        6: _record(_id=True, name="f6", subdir="bad"),
        7: _record(_id=7, name="f7", subdir="bad", hashsum="nothex"),
        9: _record(_id=9, name="../f9", subdir="bad"),
    }
    records = good + [bad[3], bad[4], bad[5], bad[6], bad[7], _record(_id=8, name="f8", subdir="ok"), bad[9]]
    with pytest.raises(InvalidInputError) as info:
        validate_records([(f"data[{index}]", record) for index, record in enumerate(records)])
    error = info.value
    assert len(error.problems) == len(bad)
    for index in bad:
        label = f"data[{index}]"
        assert sum(problem.startswith(label) for problem in error.problems) == 1, label
        assert label in str(error)
    for index in (0, 1, 2, 8):
        assert f"data[{index}]" not in str(error)


def test_empty_input_is_empty_list() -> None:
    assert validate_records([]) == []


def test_cartd_entries_accepted() -> None:
    entry = {"id": "34", "path": "a/b/foo.txt", "hashtype": "sha1", "hashsum": SHA1}
    (record,) = validate_records([("fileids[0]", entry)])
    assert record.cart_entry() == entry


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "/x", "//x", "a/\x00", "", "a/", "."])
def test_cartd_entries_with_bad_paths_refused(path: str) -> None:
    entry = {"id": "34", "path": path, "hashtype": "sha1", "hashsum": SHA1}
    with pytest.raises(InvalidInputError):
        validate_records([("fileids[0]", entry)])


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "", "a/\x00b"])
def test_file_record_values_are_checked_too(path: str) -> None:
    """validate_records says it checks every record: a hand-made FileRecord must obey the same path rules."""
    record = FileRecord(id="34", path=path, hashtype="sha1", hashsum=SHA1)
    with pytest.raises(InvalidInputError):
        validate_records([("records[0]", record)])


@pytest.mark.parametrize("changes", [{"hashsum": "nothex"}, {"hashtype": "shake_128"}, {"id": "a/b"}])
def test_file_record_other_fields_checked_too(changes: dict[str, str]) -> None:
    values = dict(id="34", path="a/x", hashtype="sha1", hashsum=SHA1)
    values.update(changes)
    try:
        (checked,) = validate_records([("records[0]", FileRecord(**values))])
    except InvalidInputError:
        return
    # Accepted only if it was made valid (lower-case hex is the documented form).
    assert checked.hashsum == SHA1 and checked.hashtype == "sha1" and checked.id == "34"


@pytest.mark.parametrize("path", ["a/./b", "a//b"])
def test_file_record_path_not_normalised(path: str) -> None:
    """A FileRecord path is documented as normalised: one that is not is refused or normalised, never kept."""
    record = FileRecord(id="34", path=path, hashtype="sha1", hashsum=SHA1)
    try:
        (checked,) = validate_records([("records[0]", record)])
    except InvalidInputError:
        return
    assert checked.path == "a/b"


def test_valid_file_record_passes() -> None:
    record = FileRecord(id="34", path="a/b/foo.txt", hashtype="sha1", hashsum=SHA1)
    assert validate_records([("records[0]", record)]) == [record]


def test_file_record_is_frozen() -> None:
    record = FileRecord(id="34", path="a", hashtype="sha1", hashsum=SHA1)
    with pytest.raises(AttributeError):
        record.path = "/etc/passwd"  # type: ignore[misc]


def test_invalid_input_error_is_a_value_error() -> None:
    error = _refused(_record(name=...))
    assert isinstance(error, ValueError)
    assert error.problems and error.problems[0] in str(error)
