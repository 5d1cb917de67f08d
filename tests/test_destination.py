"""A destination that cannot take the files, for real, on the real Cartd stack.

* Disk full: the download directory is a 1 MiB tmpfs mounted for the test
  and the cart is bigger than it (ENOSPC).
* Unwritable: the machine runs the tests as root, and root ignores file
  modes, so the download runs in a child process as root without any
  capability (``setpriv`` drops them all, so file modes bind it as they bind
  any user) against folders of mode 0555 (EACCES), and in-process against a
  tmpfs remounted read-only (EROFS, which binds root too).  Root keeps its
  uid, so the child still reaches a checkout in root's private (0700) home.
* An existing file with other content is replaced only once the new one is
  verified: it still holds its old content while the new one streams and
  after an interrupted download.
* The download folder may be a mount point of its own (``location/<filename>``
  on another disk): the download must still succeed (it fails today with
  EXDEV, see ``test_download_folder_on_another_filesystem``).

Each failure must be a :class:`DestinationError` carrying ``errno`` and a
message saying what to do, leave no ``.part`` file and no incoming folder,
leave under every final name either nothing or verified content, and leave
no cart on the server.  Tests that need ``mount`` or ``setpriv`` skip, with
the reason, where they are not available.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.child import CHILD
from support.events import make_event
from support.helpers import assert_tree, cart_gone
from support.sessions import RecordingSession

from pacifica.downloader import DestinationError, Downloader, Progress
from pacifica.downloader._incoming import HIDDEN_DIR, IncomingArea

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Seconds any one download of these tests may take, cart staging included.
DEADLINE = 30


# -- helpers ------------------------------------------------------------------


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        raise OSError(result.stderr.strip() or f"mount exited with {result.returncode}")


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False, timeout=30).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False, timeout=30)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A fresh 1 MiB tmpfs, unmounted after the test; skips when mounting is not permitted."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root; these tests run as uid {os.geteuid()}")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount command on this machine")
    point = tmp_path / "mnt"
    point.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(point))
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): {err}")
    try:
        yield point
    finally:
        _unmount(point)


def assert_no_staging(location: Path) -> None:
    """No incoming folder and no partial file is left in the library's hidden folder.

    The hidden folder itself may stay: it also holds the library's own
    bookkeeping (e.g. the index of verified files).
    """
    hidden = location / HIDDEN_DIR
    if not hidden.exists():
        return
    left = sorted(
        str(p.relative_to(hidden))
        for p in hidden.rglob("*")
        if p.name.startswith(("incoming-", "staging-")) or p.name.endswith(".part")
    )
    assert left == [], f"incoming folders or partial files left behind: {left}"


def assert_only_verified(location: Path, files: dict[str, bytes], folder: str = "data") -> dict[str, bytes]:
    """Everything under ``location`` is a requested file with its verified content; return what is there.

    No ``.part`` file, no incoming folder, nothing under a final name that is
    not exactly the requested content.
    """
    assert_no_staging(location)
    found: dict[str, bytes] = {}
    for path in location.rglob("*"):
        assert not path.name.endswith(".part"), f"partial file left: {path}"
        if HIDDEN_DIR in path.relative_to(location).parts:
            continue
        if path.is_file() or path.is_symlink():
            relative = path.relative_to(location / folder).as_posix()
            assert relative in files, f"unexpected file {path}"
            assert path.read_bytes() == files[relative], f"{path} holds unverified content"
            found[relative] = files[relative]
    return found


def assert_no_cart_left(sent: list[tuple[str, str]]) -> None:
    """Every cart that was created was deleted again."""
    posted = [url for method, url in sent if method == "POST"]
    for url in posted:
        assert ("DELETE", url) in [(method, u) for method, u in sent], f"cart {url} not deleted"
        assert cart_gone(url)


def assert_clear_message(error: DestinationError, code: int, *advice: str) -> None:
    assert isinstance(error, OSError), "DestinationError is an OSError"
    name = errno.errorcode.get(error.errno or 0)
    assert error.errno == code, f"errno {error.errno} ({name}), expected {errno.errorcode[code]}"
    message = str(error)
    assert message == error.message
    assert error.path and error.path in message, f"the message names the path: {message!r}"
    for words in advice:
        assert words in message, f"{words!r} not in {message!r}"
    assert "\n" not in message and len(message) < 1000


def used_bytes(mount: Path) -> int:
    stats = os.statvfs(mount)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


# -- disk full ------------------------------------------------------------------


def test_disk_full_raises_enospc_and_removes_partial_data(cartd_stack: Any, tmpfs: Path) -> None:
    """A 2 MiB cart into a 1 MiB filesystem: DestinationError(ENOSPC), no partial data, space given back."""
    files = {
        "a_fits/small.txt": os.urandom(64 * 1024),
        "b_big/huge.bin": os.urandom(2 * 1024 * 1024),
    }  # Cartd's tar lists files sorted by path: the small one arrives, and is verified, first
    event = make_event(cartd_stack, files)
    empty = used_bytes(tmpfs)
    session = RecordingSession()
    with pytest.raises(DestinationError) as raised:
        Downloader(tmpfs, cartd_stack.cart_url, session=session).cloudevent(event, deadline=DEADLINE)
    error = raised.value
    assert_clear_message(error, errno.ENOSPC, "disk is full", "free space or choose another location")
    assert error.path == str(tmpfs / "data" / "b_big/huge.bin")
    found = assert_only_verified(tmpfs, files)
    assert found == {"a_fits/small.txt": files["a_fits/small.txt"]}, "the verified file is kept"
    # The partial file's blocks are free again (a deleted but still open file would keep them).
    assert used_bytes(tmpfs) - empty <= sum(len(content) for content in found.values()) + 64 * 1024
    assert len(session.carts()) == 1
    assert_no_cart_left(session.sent)


def test_disk_already_full_before_the_download(cartd_stack: Any, tmpfs: Path) -> None:
    """A filesystem filled up by something else: the first write fails cleanly, the other file is untouched."""
    files = {"one/file.bin": os.urandom(200 * 1024)}
    event = make_event(cartd_stack, files)
    filler = tmpfs / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    filler_size = filler.stat().st_size
    session = RecordingSession()
    with pytest.raises(DestinationError) as raised:
        Downloader(tmpfs, cartd_stack.cart_url, session=session).cloudevent(event, deadline=DEADLINE)
    assert_clear_message(raised.value, errno.ENOSPC, "disk is full")
    assert filler.stat().st_size == filler_size
    filler.unlink()
    assert_only_verified(tmpfs, {})
    assert not (tmpfs / "data" / "one/file.bin").exists()
    assert_no_cart_left(session.sent)


# -- read-only filesystem (binds root too) -------------------------------------


def test_read_only_destination_raises_erofs(cartd_stack: Any, tmpfs: Path) -> None:
    """A download directory on a read-only filesystem: DestinationError(EROFS), nothing written, no cart left."""
    files = {"ro/a.txt": b"a" * 1000}
    event = make_event(cartd_stack, files)
    try:
        _mount("-o", "remount,ro", str(tmpfs))
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot remount the tmpfs read-only: {err}")
    session = RecordingSession()
    with pytest.raises(DestinationError) as raised:
        Downloader(tmpfs, cartd_stack.cart_url, session=session).cloudevent(event, deadline=DEADLINE)
    assert_clear_message(raised.value, errno.EROFS, "read-only", "choose another location")
    assert list(tmpfs.iterdir()) == [], "nothing was written"
    assert_no_cart_left(session.sent)


def test_download_folder_on_another_filesystem(cartd_stack: Any, tmp_path: Path, tmpfs: Path) -> None:
    """The ``filename`` folder is a mount point of its own (``location/scratch`` is another disk).

    Writable, with room to spare: the download must succeed.  Staging inside
    ``location`` puts the staged file on another filesystem than its final
    name, and ``os.replace`` across filesystems fails with EXDEV.
    """
    location = tmp_path / "home"
    scratch = location / "scratch"
    scratch.mkdir(parents=True)
    try:
        _mount("--bind", str(tmpfs), str(scratch))
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot bind-mount a folder: {err}")
    try:
        files = {"run1/a.bin": os.urandom(5000), "run1/b.txt": b"b" * 300}
        event = make_event(cartd_stack, files)
        session = RecordingSession()
        try:
            Downloader(location, cartd_stack.cart_url, session=session).cloudevent(
                event, filename="scratch", deadline=DEADLINE
            )
        except DestinationError as error:
            # Whatever happens, the failure is typed and clean.
            assert_only_verified(location, files, folder="scratch")
            assert_no_cart_left(session.sent)
            name = errno.errorcode.get(error.errno or 0)
            pytest.fail(
                f"a download whose folder is a mount point fails: {error} (errno {name}); "
                "the staged file must be on the final folder's filesystem"
            )
        assert_tree(scratch, files)
        assert_no_staging(location)
        assert_no_staging(scratch)
        assert_no_cart_left(session.sent)
    finally:
        _unmount(scratch)


# -- no permission: run without root's capabilities -----------------------------


@pytest.fixture
def unprivileged() -> None:
    """Skip unless a child can be run as root without capabilities (root ignores file modes otherwise)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip(f"dropping root's capabilities needs root; these tests run as uid {os.geteuid()}")
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv command to drop root's capabilities")


def run_unprivileged(location: Path, cart_url: str, event: dict[str, Any]) -> dict[str, Any]:
    """Run one download as root without any capability in a child process; return its JSON report."""
    argv = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", sys.executable, str(CHILD)]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONDONTWRITEBYTECODE="1", HOME=str(location.parent))
    job = json.dumps({"location": str(location), "cart_url": cart_url, "event": event, "deadline": DEADLINE})
    result = subprocess.run(
        argv,
        input=job,
        capture_output=True,
        text=True,
        env=env,
        cwd=str(location.parent),
        timeout=DEADLINE + 30,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        if "setpriv" in result.stderr and result.returncode != 0 and "Operation not permitted" in result.stderr:
            pytest.skip(f"setpriv cannot drop capabilities here: {result.stderr.strip()}")
        pytest.fail(f"the child wrote no report (exit {result.returncode}):\n{result.stderr}")
    report: dict[str, Any] = json.loads(lines[-1])
    report["sent"] = [tuple(item) for item in report.get("sent", [])]
    return report


def test_unwritable_download_directory(cartd_stack: Any, tmp_path: Path, unprivileged: None) -> None:
    """A download directory of mode 0555, written without root's capabilities: DestinationError(EACCES)."""
    location = tmp_path / "read-only"
    location.mkdir()
    location.chmod(0o555)
    files = {"x/a.txt": b"a" * 100}
    event = make_event(cartd_stack, files)
    report = run_unprivileged(location, cartd_stack.cart_url, event)
    assert "error" in report, report
    error = report["error"]
    assert error["type"] == "DestinationError", error
    assert error["errno"] == errno.EACCES, error
    assert "permission denied" in error["message"] and "choose a location you can write to" in error["message"]
    assert error["path"] and error["path"] in error["message"]
    assert list(location.iterdir()) == [], "nothing was written"
    assert_no_cart_left(report["sent"])


def test_unwritable_target_folder(cartd_stack: Any, tmp_path: Path, unprivileged: None) -> None:
    """The download directory is writable but one target folder is not: the files that can land are verified,
    the failure is DestinationError(EACCES) naming the file, and no partial data or incoming folder is left."""
    location = tmp_path / "writable"
    locked = location / "data" / "b_locked"
    locked.mkdir(parents=True)
    locked.chmod(0o555)  # no one without root's capabilities may create files in it
    # Cartd's tar lists files sorted by path: a_open/a.bin is verified and placed before the failure.
    files = {"a_open/a.bin": os.urandom(5000), "b_locked/b.bin": os.urandom(5000), "c_open/c.bin": os.urandom(5000)}
    event = make_event(cartd_stack, files)
    report = run_unprivileged(location, cartd_stack.cart_url, event)
    assert "error" in report, report
    error = report["error"]
    assert error["type"] == "DestinationError", error
    assert error["errno"] == errno.EACCES, error
    assert error["path"] == str(locked / "b.bin"), error
    assert "permission denied" in error["message"] and "choose a location you can write to" in error["message"]
    found = assert_only_verified(location, files)
    assert found == {"a_open/a.bin": files["a_open/a.bin"]}, "the file verified before the failure is kept"
    assert list(locked.iterdir()) == []
    assert len([1 for method, _ in report["sent"] if method == "POST"]) == 1
    assert_no_cart_left(report["sent"])


# -- an existing file is replaced only once the new one is verified ---------------


class Interrupt(BaseException):
    """Stands in for Ctrl-C raised from inside the download."""


def test_existing_file_replaced_only_after_verification(cartd_stack: Any, tmp_path: Path) -> None:
    """On the real stack: while the new content streams, and after an interrupted download, the final name
    still holds the old content (same inode); only the verified new file replaces it."""
    new = os.urandom(3 * 1024 * 1024 + 17)  # several reads, so several progress reports mid-file
    old = b"old content, must survive until the new one is verified\n"
    files = {"keep/big.bin": new}
    event = make_event(cartd_stack, files)
    final = tmp_path / "data" / "keep" / "big.bin"
    final.parent.mkdir(parents=True)
    final.write_bytes(old)
    old_inode = final.stat().st_ino

    # 1. Interrupted mid-file: the old file is untouched, nothing partial is left, the cart is deleted.
    def interrupt(report: Progress) -> None:
        if report.phase == "transferring" and report.bytes_done > 0:
            assert final.read_bytes() == old
            raise Interrupt

    session = RecordingSession()
    with pytest.raises(Interrupt):
        Downloader(tmp_path, cartd_stack.cart_url, session=session, progress=interrupt).cloudevent(
            event, deadline=DEADLINE
        )
    assert final.read_bytes() == old and final.stat().st_ino == old_inode
    assert_no_staging(tmp_path)
    assert_no_cart_left(session.sent)

    # 2. Completed: old content at every report while streaming, new verified content from 'verifying' on.
    seen: list[tuple[str, int, bool]] = []

    def watch(report: Progress) -> None:
        if report.phase in ("transferring", "verifying", "done"):
            content = final.read_bytes()
            assert content in (old, new), f"the final name held a partial file at {report}"
            seen.append((report.phase, report.bytes_done, content == new))

    session = RecordingSession()
    Downloader(tmp_path, cartd_stack.cart_url, session=session, progress=watch).cloudevent(event, deadline=DEADLINE)
    assert_tree(tmp_path / "data", files)
    assert final.stat().st_ino != old_inode, "replaced by a rename, not rewritten in place"
    streaming = [is_new for phase, count, is_new in seen if phase == "transferring" and count > 0]
    assert len(streaming) >= 3 and not any(streaming), f"old content while the new one streams: {seen}"
    assert [is_new for phase, _, is_new in seen if phase in ("verifying", "done")] == [True, True]
    assert_no_staging(tmp_path)
    assert_no_cart_left(session.sent)


@pytest.mark.parametrize("prefix", ["incoming", "staging"])
def test_incoming_folder_of_a_dead_process_is_removed(tmp_path: Path, prefix: str) -> None:
    """A killed run's incoming folder goes with the next run, also one named as earlier versions did ("staging-")."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    host = socket.gethostname().replace("-", "_")
    stale = tmp_path / HIDDEN_DIR / f"{prefix}-{host}-{int(dead.stdout)}-0123456789ab"
    stale.mkdir(parents=True)
    (stale / "1.part").write_bytes(b"partial")
    area = IncomingArea(tmp_path)
    try:
        assert not stale.exists()
    finally:
        area.remove()
