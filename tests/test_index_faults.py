"""A verified-files index that is truncated, garbage or locked by another process only costs hashing.

Each case downloads an event, damages the index, then downloads the same
event again (every file is hashed and found right: no cart) and a new
event into the same location (a cart, and the tree exact).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.events import make_event
from support.helpers import assert_tree
from support.sessions import RecordingSession

from pacifica.downloader import Downloader
from pacifica.downloader._incoming import HIDDEN_DIR
from pacifica.downloader._verified import INDEX_NAME, VerifiedIndex

HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


def truncate(index: Path) -> None:
    data = index.read_bytes()
    index.write_bytes(data[: len(data) // 2 + 100])


def garbage(index: Path) -> None:
    index.write_bytes(os.urandom(8192))


@pytest.fixture
def hold_lock() -> Iterator[Any]:
    holders: list[subprocess.Popen[str]] = []

    def hold(index: Path) -> None:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(index)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        holders.append(holder)
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"

    yield hold
    for holder in holders:
        holder.communicate("", timeout=30)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "locked"])
def test_a_damaged_or_locked_index_costs_only_hashing(
    cartd_stack: Any, tmp_path: Path, damage: str, hold_lock: Any
) -> None:
    first = {f"f/{index}.bin": os.urandom(3000 + index) for index in range(30)}
    second = {"g/new.bin": os.urandom(5000)}
    event, later = make_event(cartd_stack, first), make_event(cartd_stack, second)
    Downloader(tmp_path, cartd_stack.cart_url).cloudevent(event)
    index = tmp_path / HIDDEN_DIR / INDEX_NAME
    assert index.stat().st_size > 4096, "the index holds the 30 files"
    {"truncate": truncate, "garbage": garbage, "locked": hold_lock}[damage](index)

    session = RecordingSession()
    again = Downloader(tmp_path, cartd_stack.cart_url, session=session)
    assert len(again.cloudevent(event)) == 30
    assert session.posts() == [], "every file hashed and found right: no cart"
    again.cloudevent(later)
    assert len(session.posts()) == 1
    assert_tree(tmp_path / "data", {**first, **second})
    if damage != "locked":
        assert (index.parent / (INDEX_NAME + ".damaged")).exists(), "the damaged index was moved aside"


def test_an_index_turned_off_by_a_lock_is_not_asked_again(tmp_path: Path, hold_lock: Any) -> None:
    index = VerifiedIndex(tmp_path)
    target = tmp_path / "a.txt"
    target.write_text("a")
    index.remember([("a.txt", target, "sha1", "x")])
    assert index.is_verified("a.txt", target, "sha1", "x")
    hold_lock(index.path)
    assert not index.is_verified("a.txt", target, "sha1", "x"), "locked: the file is hashed instead"
    assert index._db is None, "and the index is off for the rest of the download"
    index.close()


def test_garbage_is_set_aside_and_a_new_index_begun(tmp_path: Path) -> None:
    (tmp_path / INDEX_NAME).write_bytes(b"not a database" * 1000)
    index = VerifiedIndex(tmp_path)
    target = tmp_path / "a.txt"
    target.write_text("a")
    index.remember([("a.txt", target, "sha1", "x")])
    assert index.is_verified("a.txt", target, "sha1", "x")
    assert (tmp_path / (INDEX_NAME + ".damaged")).read_bytes().startswith(b"not a database")
    index.close()
