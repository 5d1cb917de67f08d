"""The programs on the package index that depend on this library, run unmodified against the real stack.

pacifica-cli 0.5.2 (``pacifica-cli download``) and pacifica-dispatcher 0.2.5
(``RemoteDownloaderRunner``) are installed as users get them, with this
library installed over the 0.4.1 they pull in (see released_programs.py), and
run as subprocesses of their own virtualenv: their code, not a reading of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from support.events import archive, event_with
from support.released_programs import DISPATCHER_TEST, ReleasedPrograms, ensure_released_programs

# Every test here runs the released programs' venv, installed from the package index: never offline.
pytestmark = pytest.mark.stack

#: Seconds any one released program may take here; they finish in a few.
BOUND = 120
FILES = {
    "a/b/foo.txt": b"foo\n" * 40,
    "a/b/\u00e9/bar\u00e9.txt": "bar\u00e9\n".encode(),
    "raw/run-01.dat": os.urandom(300_000),
}


@pytest.fixture(scope="session")
def released() -> ReleasedPrograms:
    return ensure_released_programs()


def program_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a released program: a home of its own (pacifica-cli writes ~/.pacifica_cli)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV", "CARTD_CART_API_URL", "CARTD_PROTO", "CARTD_ADDR", "CARTD_PORT")
    }
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", **extra)
    return env


def assert_files(root: Path, files: dict[str, bytes]) -> None:
    found = {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and ".pacifica-downloader" not in path.parts
    }
    assert {path: hashlib.sha1(data).hexdigest() for path, data in found.items()} == {
        path: hashlib.sha1(data).hexdigest() for path, data in files.items()
    }


def cart_gone(url: str) -> bool:
    return requests.head(url, timeout=10).status_code == 404


# -- pacifica-cli ------------------------------------------------------------------------------


def run_cli(released: ReleasedPrograms, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(released.bin_dir / "pacifica-cli"), "download", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BOUND,
    )


def test_pacifica_cli_downloads_a_cloudevent_and_exits_0(
    released: ReleasedPrograms, cartd_stack: Any, tmp_path: Path
) -> None:
    event = event_with(archive(cartd_stack, FILES))
    (tmp_path / "event.json").write_text(json.dumps(event))
    result = run_cli(
        released,
        ["--cloudevent", str(tmp_path / "event.json"), "--destination", str(tmp_path / "d")],
        program_env(tmp_path, DOWNLOAD_URL=cartd_stack.cart_url),
    )
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "d") not in result.stdout + result.stderr, "no list of paths printed on exit"
    assert_files(tmp_path / "d" / "data", FILES)


def test_pacifica_cli_event_without_files_exits_0(released: ReleasedPrograms, cartd_stack: Any, tmp_path: Path) -> None:
    (tmp_path / "event.json").write_text(json.dumps({"eventID": "cli-2", "data": []}))
    result = run_cli(
        released,
        ["--cloudevent", str(tmp_path / "event.json"), "--destination", str(tmp_path / "d")],
        program_env(tmp_path, DOWNLOAD_URL=cartd_stack.cart_url),
    )
    assert result.returncode == 0, result.stderr


def test_pacifica_cli_downloads_a_transaction_by_id_from_the_real_policy(
    released: ReleasedPrograms, facility: Any, tmp_path: Path
) -> None:
    """Uploaded with pacifica-cli, fetched by id with pacifica-cli: Policy's own document, Cartd's own cart."""
    upload = tmp_path / "upload"
    for path, data in FILES.items():
        (upload / path).parent.mkdir(parents=True, exist_ok=True)
        (upload / path).write_bytes(data)
    transaction = facility.upload(upload)
    env = program_env(
        tmp_path, DOWNLOAD_URL=facility.cart_url, DOWNLOAD_POLICY_URL=f"{facility.policy_url}/status/transactions/by_id"
    )
    result = run_cli(released, ["--transaction-id", str(transaction), "--destination", str(tmp_path / "d")], env)
    assert result.returncode == 0, result.stderr
    assert_files(tmp_path / "d" / "data", FILES)

    unknown = run_cli(released, ["--transaction-id", "987653", "--destination", str(tmp_path / "u")], env)
    assert unknown.returncode != 0, "an unknown transaction is not an empty download"
    assert "No Transaction with an ID of 987653 was found" in unknown.stderr
    assert not (tmp_path / "u" / "data").exists()


# -- pacifica-dispatcher -----------------------------------------------------------------------

#: RemoteDownloaderRunner as a processing service uses it; the carts it makes are recorded to check them after.
DISPATCHER_SCRIPT = """
import json, sys
from pacifica.downloader import Downloader
from pacifica.dispatcher.downloader_runners import RemoteDownloaderRunner
from pacifica.dispatcher.models import File

spec = json.load(sys.stdin)
downloader = Downloader()
created = []
setup_cart = downloader.cart_api.setup_cart
def recording_setup_cart(yield_files):
    created.append(setup_cart(yield_files))
    return created[-1]
downloader.cart_api.setup_cart = recording_setup_cart
openers = RemoteDownloaderRunner(downloader).download(spec["basedir"], files=[File(**f) for f in spec["files"]])
texts = []
for opener in openers:
    with opener() as handle:
        texts.append(handle.read())
print(json.dumps({"texts": texts, "carts": created}))
"""


def test_dispatcher_remote_runner_downloads_and_opens_the_files(
    released: ReleasedPrograms, cartd_stack: Any, tmp_path: Path
) -> None:
    texts = {"a/b/foo.txt": "foo\n" * 3, "a/b/\u00e9/bar\u00e9.txt": "bar\u00e9\n"}
    objects = archive(cartd_stack, {path: text.encode() for path, text in texts.items()})
    spec = {
        "basedir": str(tmp_path / "base"),
        "files": [
            {
                "_id": obj["_id"],
                "name": obj["name"],
                "subdir": obj["subdir"],
                "hashtype": "sha1",
                "hashsum": obj["hashsum"],
                "encoding": "utf-8",
            }
            for obj in objects
        ],
    }
    result = subprocess.run(
        [str(released.python), "-c", DISPATCHER_SCRIPT],
        input=json.dumps(spec),
        env=program_env(tmp_path, CARTD_CART_API_URL=cartd_stack.cart_url),
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["texts"] == list(texts.values())
    assert_files(tmp_path / "base" / "data", {path: text.encode() for path, text in texts.items()})
    (cart_url,) = answer["carts"]
    assert cart_gone(cart_url), "the cart is deleted after the download"


def test_dispatcher_own_remote_runner_test_passes(released: ReleasedPrograms, cartd_stack: Any, tmp_path: Path) -> None:
    """pacifica-dispatcher's tests/downloader_runners_test.py, from its sdist, unchanged, on the local stack.

    It downloads ids 103 and 104 (a unicode subdir ``a/b/é`` and name ``baré.txt``) whose content is its
    README, as its own CI archives them.
    """
    source = released.dispatcher_source
    readme = (source / "README.md").read_text()
    for file_id in (103, 104):
        cartd_stack.put_file(file_id, readme.encode("utf8"))
    result = subprocess.run(
        [str(released.python), "-m", "unittest", "-v", Path(DISPATCHER_TEST).stem],
        cwd=source / Path(DISPATCHER_TEST).parent,
        env=program_env(tmp_path, CARTD_CART_API_URL=cartd_stack.cart_url),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert result.returncode == 0, result.stderr
    assert "(downloader_runners_test.RemoteDownloaderRunnerTestCase.test_remote_downloader_runner)" in result.stderr
    assert "Ran 4 tests" in result.stderr and result.stderr.rstrip().endswith("OK")
