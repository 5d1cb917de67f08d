"""FileReserve: incoming files created ahead by a thread, only as many as promised, cleaned up on close."""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from pacifica.downloader._reserve import FileReserve

FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL
Make = Callable[..., FileReserve]


@pytest.fixture
def make_reserve() -> Iterator[Make]:
    """Make reserves (block=2) that are closed after the test."""
    made: list[FileReserve] = []

    def make(folder: Path, ahead: int = 64) -> FileReserve:
        made.append(FileReserve(str(folder), FLAGS, ahead=ahead, block=2))
        return made[-1]

    yield make
    for reserve in made:
        reserve.close()


def _files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def _wait_for(reserve: FileReserve, count: int) -> None:
    """Wait (on the reserve's own condition, no sleeping) until ``count`` files are ready."""
    with reserve._changed:
        if not reserve._changed.wait_for(lambda: len(reserve._ready) >= count, timeout=30):
            raise AssertionError(f"only {len(reserve._ready)} of {count} files were created ahead")


def test_creates_only_what_was_promised_and_hands_it_out(tmp_path: Path, make_reserve: Make) -> None:
    reserve = make_reserve(tmp_path)
    assert reserve.take() is None  # nothing promised: the caller creates its own
    reserve.promise(3)
    _wait_for(reserve, 3)
    taken = [reserve.take() for _ in range(3)]
    assert reserve.take() is None
    for made in taken:
        assert made is not None
        path, fd = made
        os.write(fd, b"x")
        os.close(fd)
        assert Path(path).read_bytes() == b"x"
    assert len(_files(tmp_path)) == 3


def test_stays_at_most_ahead_files_ahead(tmp_path: Path, make_reserve: Make) -> None:
    reserve = make_reserve(tmp_path, ahead=4)
    reserve.promise(10)
    _wait_for(reserve, 4)
    assert len(_files(tmp_path)) == 4
    made = reserve.take()
    assert made is not None
    os.close(made[1])
    _wait_for(reserve, 4)
    assert len(_files(tmp_path)) == 5


def test_withdrawn_promises_are_not_created(tmp_path: Path, make_reserve: Make) -> None:
    reserve = make_reserve(tmp_path, ahead=2)
    reserve.promise(10)
    _wait_for(reserve, 2)
    reserve.withdraw(10)
    for _ in range(2):
        made = reserve.take()
        assert made is not None
        os.close(made[1])
    assert reserve.take() is None
    assert len(_files(tmp_path)) == 2


def test_close_closes_the_descriptors_of_files_never_taken(tmp_path: Path, make_reserve: Make) -> None:
    reserve = make_reserve(tmp_path)
    reserve.promise(2)
    _wait_for(reserve, 2)
    fds = [fd for _, fd in reserve._ready]
    reserve.close()
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError:
            continue
        raise AssertionError(f"descriptor {fd} is still open after close()")
    assert not any(thread.name == "pacifica-create" and thread.is_alive() for thread in threading.enumerate())


def test_a_creation_error_stops_the_thread_and_leaves_the_error_to_the_caller(
    tmp_path: Path, make_reserve: Make
) -> None:
    (tmp_path / "file").write_bytes(b"")
    reserve = make_reserve(tmp_path / "file")  # its subfolders cannot be made: a file is in the way
    reserve.promise(5)
    reserve._thread.join(timeout=30)
    assert not reserve._thread.is_alive()
    assert reserve.take() is None


def test_files_are_made_in_turn_in_subfolders(tmp_path: Path, make_reserve: Make) -> None:
    reserve = make_reserve(tmp_path, ahead=4)  # block=2: 3 subfolders, 2 files at a time
    reserve.promise(8)
    taken = []
    for _ in range(8):
        _wait_for(reserve, 1)
        made = reserve.take()
        assert made is not None
        os.close(made[1])
        taken.append(Path(made[0]).parent.name)
    assert taken == ["ahead-0", "ahead-0", "ahead-1", "ahead-1", "ahead-2", "ahead-2", "ahead-0", "ahead-0"]
