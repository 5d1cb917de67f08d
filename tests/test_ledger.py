"""The cart ledger: carts written down before their POST, taken over (deleted) by the next run once their run
died, and left alone while it lives, whether in another process or in this one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

from pacifica.downloader._ledger import LEDGER_DIR, CartLedger

URL = "http://cartd.example:8081"


def dead_run(hidden: Path, name: str, lines: str) -> Path:
    """A ledger file as a run that died left it: nobody holds it."""
    folder = hidden / LEDGER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"run-{name}"
    path.write_text(lines, encoding="utf-8")
    return path


def recorder(deleted: list[str]) -> Callable[[str], bool]:
    """A ``delete`` that notes each URL and says it is gone."""

    def delete(url: str) -> bool:
        deleted.append(url)
        return True

    return delete


def test_a_run_writes_its_carts_down_and_removes_its_ledger_once_all_are_deleted(tmp_path: Path) -> None:
    ledger = CartLedger(tmp_path, URL)
    ledger.add(f"{URL}/a")
    ledger.add(f"{URL}/b")
    ledger.remove(f"{URL}/a")
    assert ledger.path.read_text() == f"+ {URL}/a\n+ {URL}/b\n- {URL}/a\n"
    assert ledger.live == {f"{URL}/b"}
    ledger.remove(f"{URL}/b")
    ledger.close()
    assert not ledger.path.exists()


def test_a_ledger_with_carts_left_stays_for_the_next_run(tmp_path: Path) -> None:
    ledger = CartLedger(tmp_path, URL)
    ledger.add(f"{URL}/a")
    ledger.close()
    assert ledger.path.exists()
    deleted: list[str] = []
    assert CartLedger(tmp_path, URL).take_over(recorder(deleted)) == 1
    assert deleted == [f"{URL}/a"] and not ledger.path.exists()


def test_the_carts_of_a_dead_run_are_deleted_and_its_ledger_removed(tmp_path: Path) -> None:
    path = dead_run(tmp_path, "host-1-x", f"+ {URL}/a\n+ {URL}/b\n- {URL}/a\n+ {URL}/c\n+ http://cartd.ex")
    deleted: list[str] = []
    assert CartLedger(tmp_path, URL).take_over(recorder(deleted)) == 2
    assert deleted == [f"{URL}/b", f"{URL}/c"], "a torn last line (a crash while writing) is ignored"
    assert not path.exists()


def test_a_cart_that_cannot_be_deleted_is_kept_in_the_new_runs_ledger(tmp_path: Path) -> None:
    path = dead_run(tmp_path, "host-1-x", f"+ {URL}/a\n+ {URL}/b\n")
    ledger = CartLedger(tmp_path, URL)
    assert ledger.take_over(lambda url: not url.endswith("/b")) == 1
    assert ledger.live == {f"{URL}/b"}, "kept, so that a later run tries again"
    assert not path.exists()
    ledger.close()
    assert ledger.path.exists()


def test_the_ledger_of_another_cartd_is_left_alone(tmp_path: Path) -> None:
    path = dead_run(tmp_path, "host-1-x", "+ http://other:8081/a\n")
    assert CartLedger(tmp_path, URL).take_over(lambda url: True) == 0
    assert path.exists()


def test_the_ledger_of_a_live_run_in_another_process_is_left_alone(tmp_path: Path) -> None:
    path = dead_run(tmp_path, "host-2-x", f"+ {URL}/a\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert CartLedger(tmp_path, URL).take_over(lambda url: True) == 0
        assert path.exists()
    finally:
        holder.communicate("", timeout=30)
    assert CartLedger(tmp_path, URL).take_over(lambda url: True) == 1, "once its process ended, it is taken over"


def test_the_ledger_of_a_live_run_in_this_process_is_left_alone(tmp_path: Path) -> None:
    running = CartLedger(tmp_path, URL)
    running.add(f"{URL}/a")
    try:
        assert CartLedger(tmp_path, URL).take_over(lambda url: True) == 0
        assert running.live == {f"{URL}/a"} and running.path.exists()
    finally:
        running.remove(f"{URL}/a")
        running.close()
