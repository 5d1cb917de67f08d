"""Smoke test of the real Cartd stack itself: archive upload, cart, tar download, delete."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
import uuid
from typing import Any

import pytest
import requests
from cartd_stack import CartdStack

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
            pytest.fail(f"cart went {response.status_code} {status}: "
                        f"{response.headers.get('X-Pacifica-Message')}\n{stack.log_tails()}")
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
