"""A virtualenv with the released programs that depend on this library, and this library installed over them.

pacifica-cli and pacifica-dispatcher are installed from the package index
exactly as a user gets them; each pulls in pacifica-downloader 0.4.1, and this
checkout is then installed over it (a real, non-editable install, from a copy
of the source so the checkout stays clean), as a user upgrading would.  They
live in their own virtualenv because they bring ``pacifica-namespace``, whose
``pacifica/__init__.py`` the library's own environment must not have.

The dispatcher's own test of its remote downloader
(``tests/downloader_runners_test.py``) is taken from its source distribution,
so the test suite can run it unchanged against the local stack.

Only the standard library is used; the venv is rebuilt only when the pinned
programs change, and this library is reinstalled only when its source does.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from support.cartd_stack import REPO_ROOT, StackError

#: The released programs, pinned: the versions on the package index that call this library.
RELEASED_PROGRAMS = ["pacifica-cli==0.5.2", "pacifica-dispatcher==0.2.5"]
#: Where the dispatcher's own test comes from.
DISPATCHER_SDIST = "pacifica-dispatcher==0.2.5"
DISPATCHER_TEST = "tests/downloader_runners_test.py"
#: What a build of this library needs from the checkout.
_SOURCE = ["setup.cfg", "setup.py", "pyproject.toml", "README.md", "LICENSE", "pacifica"]
_VENV = REPO_ROOT / ".venv-released"


@dataclass(frozen=True)
class ReleasedPrograms:
    """The virtualenv's interpreter and scripts, and the unpacked dispatcher source (``dispatcher_source``)."""

    python: Path
    bin_dir: Path
    dispatcher_source: Path


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-40:])
        raise StackError(f"{what} failed with exit code {result.returncode}:\n{tail}")


def _source_digest() -> str:
    """A digest of the library's source files: when it changes, the venv gets the new build."""
    digest = hashlib.sha256()
    for name in _SOURCE:
        path = REPO_ROOT / name
        files = (
            sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            if path.is_dir()
            else [path]
        )
        for file in files:
            digest.update(str(file.relative_to(REPO_ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def ensure_released_programs(venv: Path = _VENV) -> ReleasedPrograms:
    """Create (or reuse) the virtualenv with the released programs and this library over them."""
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    programs_marker = venv / "released-programs.txt"
    wanted = "\n".join(RELEASED_PROGRAMS) + "\n"
    if not (python.exists() and programs_marker.exists() and programs_marker.read_text() == wanted):
        if venv.exists():
            shutil.rmtree(venv)
        _run([sys.executable, "-m", "venv", str(venv)], "creating the released programs' virtualenv")
        _run(pip + RELEASED_PROGRAMS, "installing " + " ".join(RELEASED_PROGRAMS))
        programs_marker.write_text(wanted)
    library_marker = venv / "library-source.sha256"
    digest = _source_digest()
    if not library_marker.exists() or library_marker.read_text() != digest:
        with tempfile.TemporaryDirectory(prefix="pacifica-downloader-build-") as build:
            for name in _SOURCE:
                source, copy = REPO_ROOT / name, Path(build) / name
                if source.is_dir():
                    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(source, copy)
            _run(pip + ["--no-deps", "--force-reinstall", build], "installing this library over 0.4.1")
        library_marker.write_text(digest)
    source = venv / "dispatcher-source"
    if not (source / DISPATCHER_TEST).exists():
        with tempfile.TemporaryDirectory(prefix="pacifica-dispatcher-sdist-") as download:
            _run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "download",
                    "--disable-pip-version-check",
                    "--quiet",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "-d",
                    download,
                    DISPATCHER_SDIST,
                ],
                "fetching the dispatcher's source",
            )
            (archive,) = Path(download).glob("*.tar.gz")
            with tarfile.open(archive) as sdist:
                top = sdist.getnames()[0].split("/")[0]
                unpacked = Path(download) / "unpacked"
                # Our own pinned download; the "data" filter where this Python has one.
                options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                sdist.extractall(unpacked, **options)  # type: ignore[arg-type]
            shutil.rmtree(source, ignore_errors=True)
            shutil.move(str(unpacked / top), str(source))
    return ReleasedPrograms(python=python, bin_dir=venv / "bin", dispatcher_source=source)
