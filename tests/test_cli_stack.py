"""The ``pacifica-downloader`` command end to end, on the real Cartd stack (``cartd_stack`` fixture).

Each test runs ``python -m pacifica.downloader`` as a subprocess and stores
its files in the archive under ids of its own, drawn at random from a high
range, so that tests never see each other's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.events import archive, event_with, fresh_id
from support.helpers import is_index_file
from support.processes import subprocess_env

TIMEOUT = 180  # seconds for one command, cart staging included


def some_files() -> dict[str, bytes]:
    return {
        "proposal/run1/readme.txt": b"pacifica end to end\n",
        "proposal/run1/data.bin": os.urandom(200_000),
        "empty.txt": b"",
    }


def event(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """A CloudEvents 1.0 structured event: the command reads both forms."""
    return event_with(objects, spec="1.0")


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run(
        [sys.executable, "-m", "pacifica.downloader", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=TIMEOUT,
    )


def check_manifest(stdout: str, files: dict[str, bytes], root: Path, ordered: bool = True) -> None:
    """The --json manifest lists every file (in input order if ``ordered``), and each file holds its content."""
    entries = json.loads(stdout)
    expected = [(str((root / path).resolve()), data) for path, data in files.items()]
    if not ordered:
        entries.sort(key=lambda entry: entry["path"])
        expected.sort()
    assert [entry["path"] for entry in entries] == [path for path, _ in expected]
    for entry, (_, data) in zip(entries, expected):
        assert Path(entry["path"]).read_bytes() == data
        assert entry["size"] == len(data)
        assert (entry["hashtype"], entry["hashsum"]) == ("sha1", hashlib.sha1(data).hexdigest())


@pytest.mark.parametrize("server", ["plain", "bundle"])
def test_cloudevent_json_manifest(cartd_stack: Any, tmp_path: Path, server: str) -> None:
    files = some_files()
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(event(archive(cartd_stack, files))))
    cart_url = cartd_stack.bundle_cart_url if server == "bundle" else cartd_stack.cart_url
    out = tmp_path / "out"
    carts_before = cartd_stack.cart_count_on_disk()

    result = run_cli("cloudevent", str(event_file), "-d", str(out), "--cart-url", cart_url, "--json")

    assert result.returncode == 0, result.stderr
    check_manifest(result.stdout, files, out / "data")
    assert result.stderr.startswith("pacifica-downloader: 3 files (")
    assert cartd_stack.cart_count_on_disk() == carts_before  # the cart was deleted

    # A second run finds everything in place: no cart, same manifest.
    again = run_cli("cloudevent", str(event_file), "-d", str(out), "--cart-url", cart_url, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == json.loads(result.stdout)
    assert "3 already present" in again.stderr


def test_cloudevent_from_stdin_with_filename(cartd_stack: Any, tmp_path: Path) -> None:
    files = some_files()
    result = run_cli(
        "cloudevent",
        "-",
        "-d",
        str(tmp_path),
        "--cart-url",
        cartd_stack.cart_url,
        "--filename",
        "incoming",
        "--json",
        "-q",
        stdin=json.dumps(event(archive(cartd_stack, files))),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    check_manifest(result.stdout, files, tmp_path / "incoming")


def test_wrong_hash_exits_3_and_writes_nothing(cartd_stack: Any, tmp_path: Path) -> None:
    files = some_files()
    objects = archive(cartd_stack, files)
    objects[1]["hashsum"] = hashlib.sha1(b"something else").hexdigest()
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(event(objects)))
    out = tmp_path / "out"
    carts_before = cartd_stack.cart_count_on_disk()

    result = run_cli("cloudevent", str(event_file), "-d", str(out), "--cart-url", cartd_stack.cart_url, "--json")

    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("pacifica-downloader: error: Cartd could not stage the cart")
    assert "Traceback" not in result.stderr
    assert [path for path in out.rglob("*") if path.is_file() and not is_index_file(out, path)] == []
    assert cartd_stack.cart_count_on_disk() == carts_before


def test_transactioninfo_document(cartd_stack: Any, tmp_path: Path) -> None:
    files = some_files()
    objects = archive(cartd_stack, files)
    document = {
        "files": {str(obj["_id"]): {k: v for k, v in obj.items() if k != "destinationTable"} for obj in objects}
    }
    doc_file = tmp_path / "transaction.json"
    doc_file.write_text(json.dumps(document))
    out = tmp_path / "out"

    result = run_cli("transactioninfo", str(doc_file), "-d", str(out), "--cart-url", cartd_stack.cart_url, "--json")

    assert result.returncode == 0, result.stderr
    check_manifest(result.stdout, files, out / "data", ordered=False)


def test_missing_file_id_exits_3(cartd_stack: Any, tmp_path: Path) -> None:
    """A file id the archive does not hold makes Cartd fail the cart: a server error, exit 3."""
    missing = fresh_id()
    obj = {
        "destinationTable": "Files",
        "_id": missing,
        "name": "ghost.txt",
        "subdir": "",
        "hashtype": "sha1",
        "hashsum": hashlib.sha1(b"ghost").hexdigest(),
    }
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(event([obj])))
    result = run_cli("cloudevent", str(event_file), "-d", str(tmp_path / "out"), "--cart-url", cartd_stack.cart_url)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("pacifica-downloader: error: ")
    assert not (tmp_path / "out" / "data" / "ghost.txt").exists()
