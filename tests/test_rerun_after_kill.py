"""A download killed mid-stream (SIGKILL: no cleanup runs), then run again, on the real Cartd stack.

The child process (``download_child.py``) downloads an event of 8 files of
4 MiB.  Its progress callback, once the first file is verified and placed
and the next one has started streaming into the incoming area, tells the
parent through its stdout pipe and blocks; the parent then SIGKILLs it.  No
sleep is involved: the parent waits on the pipe, the child on an event
nobody sets.

After the kill every final name is absent or holds verified content, the
dead process's incoming folder (with its partial file) is still there, and
so is its cart, on the server and in its ledger.  A second download,
in-process, first deletes that cart, removes the stale folder, fetches only
the files that are missing (the POSTed cart lists exactly their ids) and
ends with every file right and no cart of either run left on the server.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from support.child import file_ids, run_and_kill
from support.events import make_event
from support.helpers import assert_tree, cart_gone, incoming_leftovers
from support.sessions import RecordingSession

from pacifica.downloader import CartAPI, Downloader
from pacifica.downloader._incoming import HIDDEN_DIR
from pacifica.downloader._ledger import LEDGER_DIR

FILE_COUNT = 8
FILE_SIZE = 4 * 1024 * 1024


def test_rerun_after_sigkill_fetches_only_missing_files(cartd_stack: Any, tmp_path: Path) -> None:
    files = {f"run/f{index}.bin": os.urandom(FILE_SIZE) for index in range(FILE_COUNT)}
    event = make_event(cartd_stack, files)
    ids = file_ids(event)
    assert sorted(ids) == sorted(files)
    location = tmp_path / "dl"
    data = location / "data"

    # 1. The download is killed mid-stream.
    paused = run_and_kill(location, cartd_stack.cart_url, event)
    try:
        assert paused["files_done"] >= 1
        present = {}
        for path, content in files.items():
            final = data / path
            if final.exists() or final.is_symlink():
                assert final.read_bytes() == content, f"{final} holds unverified content after the kill"
                present[path] = content
        assert 1 <= len(present) < FILE_COUNT, f"killed after the first file, before the last: {sorted(present)}"
        # Nothing but final names and the incoming area: no partial file next to the finals.
        stray = [p for p in data.rglob("*") if p.is_file() and p.relative_to(data).as_posix() not in present]
        assert stray == []
        host = socket.gethostname().replace("-", "_")
        stale = sorted((location / HIDDEN_DIR).glob("incoming-{}-{}-*".format(host, paused["pid"])))
        hidden = location / HIDDEN_DIR
        names = sorted(p.name for p in hidden.iterdir()) if hidden.exists() else []
        assert len(stale) == 1, f"the killed process's incoming folder is still there: {names}"
        # The partial file is there, beside empty ones created ahead of their use (see reserve.py).
        parts = [p for p in stale[0].rglob("*") if p.is_file()]
        assert {p.suffix for p in parts} == {".part"}, f"unexpected entries in the incoming folder: {parts}"
        assert len([p for p in parts if p.stat().st_size]) == 1, "the partial file is in the incoming folder"
        assert not cart_gone(paused["cart_url"]), "the killed process could not delete its cart"
        (ledger,) = (hidden / LEDGER_DIR).glob("run-{}-{}-*".format(host, paused["pid"]))
        assert f"+ {paused['cart_url']}" in ledger.read_text(), "its cart was written down before its POST"
    except BaseException:
        CartAPI(cartd_stack.cart_url).delete_cart(paused["cart_url"])  # leave the shared stack clean
        raise

    # 2. Run again, in-process: only the missing files are asked for, the stale folder goes.
    missing = sorted(set(files) - set(present))
    session = RecordingSession()
    written = Downloader(location, cartd_stack.cart_url, session=session).cloudevent(event, deadline=60)
    assert sorted(written) == sorted(str(data / path) for path in files)
    assert_tree(data, files)
    assert not stale[0].exists(), "the dead process's incoming folder was removed"
    hidden = location / HIDDEN_DIR
    left = (
        sorted(p.name for p in hidden.iterdir() if p.name.startswith(("incoming-", "staging-")))
        if hidden.exists()
        else []
    )
    assert left == [], f"no incoming folder is left: {left}"
    assert [p for p in location.rglob("*.part")] == []
    assert incoming_leftovers(location) == [], "the dead run's ledger is gone, and this run's too"
    assert session.sent[0] == ("DELETE", paused["cart_url"]), "the dead run's cart is deleted before any POST"
    assert cart_gone(paused["cart_url"])
    (posted,) = session.posts()
    cart_url, body = posted
    assert sorted(entry["id"] for entry in body["fileids"]) == sorted(ids[path] for path in missing)
    assert sorted(entry["path"] for entry in body["fileids"]) == missing
    assert ("DELETE", cart_url) in session.sent
    assert cart_gone(cart_url)

    # 3. Once more: nothing is missing, no request at all.
    session = RecordingSession()
    Downloader(location, cartd_stack.cart_url, session=session).cloudevent(event, deadline=60)
    assert session.sent == []
    assert_tree(data, files)


def test_incoming_folder_of_a_live_process_is_kept(cartd_stack: Any, tmp_path: Path) -> None:
    """An incoming folder whose process is still alive (a concurrent download) is not touched by another run."""
    files = {"live/a.txt": b"a" * 100}
    event = make_event(cartd_stack, files)
    host = socket.gethostname().replace("-", "_")
    other = tmp_path / HIDDEN_DIR / f"incoming-{host}-{os.getppid()}-0123456789ab"
    other.mkdir(parents=True)
    (other / "1.part").write_bytes(b"partial")
    Downloader(tmp_path, cartd_stack.cart_url).cloudevent(event, deadline=60)
    assert_tree(tmp_path / "data", files)
    assert (other / "1.part").read_bytes() == b"partial"
