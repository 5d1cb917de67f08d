#!/usr/bin/env python3
"""Set up everything and run one development task, with nothing but Python 3.9+ and git.

    python3 dev.py demo     # local Cartd stack + a demo download with progress
    python3 dev.py test     # lint, the docs and the whole test suite with its coverage (starts its own Cartd stack)
    python3 dev.py lint     # mypy --strict and ruff on the library
    python3 dev.py docs     # the Sphinx docs into docs/_build/html, every warning an error
    python3 dev.py bench    # the benchmarks of benchmarks/ (see benchmarks/README.md)
    python3 dev.py bench-workers   # 20 events on download workers against one process (benchmarks/workers.py)
    python3 dev.py deps     # the HTTP layer's server-free tests with the oldest and the newest requests/urllib3

It creates ``.venv`` (the library, editable, with its test and docs tools),
``.venv-stack`` (Cartd and the archive interface) and ``.venv-facility`` (the
rest of a Pacifica facility: Ingest, Metadata, Policy, Notifications,
UniqueID, pacifica-cli), each Pacifica venv kept apart because the services
install a ``pacifica/__init__.py`` of their own and pin different peewees,
then runs the task in ``.venv``.
Every step is idempotent: a second run reuses what the first installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("PACIFICA_DEV_VENV", ROOT / ".venv"))
#: The library's extras the development environment installs (docs: Sphinx; celery: what the tasks module imports).
DEV_EXTRAS = "progress,test,docs,celery"
#: What the development environment needs besides the library and its extras.
DEV_REQUIREMENTS = [
    "pytest==9.2.0",
    "pytest-cov==7.1.0",
    "coverage==7.17.3",
    "hypothesis==6.170.15",
    "tqdm==4.70.1",
    "mypy==2.4.1",
    "ruff==0.17.6",
    "types-requests==2.33.0.20261030",
    "cloudevents==2.2.0",
    "celery[redis]==5.7.0",
    "trustme==1.2.1",
]


def venv_python(path: Path) -> Path:
    """The interpreter of the virtualenv at ``path``."""
    return path / ("Scripts" if os.name == "nt" else "bin") / "python"


def ensure_dev_venv() -> Path:
    """Create ``.venv`` with the library (editable) and the dev tools, unless already done."""
    python = venv_python(VENV)
    wanted = "\n".join(DEV_REQUIREMENTS + [DEV_EXTRAS, (ROOT / "pyproject.toml").read_text()])
    stamp = hashlib.sha256(wanted.encode()).hexdigest()
    marker = VENV / "pacifica-dev.stamp"
    if python.exists() and marker.exists() and marker.read_text() == stamp:
        return python
    if not python.exists():
        print(f"dev.py: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["-e", f"{ROOT}[{DEV_EXTRAS}]"] + DEV_REQUIREMENTS, check=True)
    marker.write_text(stamp)
    return python


def ensure_stack() -> None:
    """Create ``.venv-stack`` (Cartd, tests/support/cartd_stack.py) and ``.venv-facility`` (the rest of a facility)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from support.cartd_stack import default_stack_venv_path, ensure_stack_venv
    from support.facility_stack import ensure_facility_venv

    ensure_stack_venv(default_stack_venv_path())
    ensure_facility_venv()


#: Pythons whose server-free tests also run under ``dev.py test`` when the machine has them; "system" is the
#: distribution's own python3 (Debian's 3.11.2 has no tarfile extraction filters at all).
OTHER_PYTHONS = ["3.9", "3.10", "3.12", "3.13", "system"]
#: What the server-free tests need on those Pythons (pip picks versions that fit each one).
OTHER_REQUIREMENTS = ["pytest", "hypothesis", "tqdm", "trustme"]


def find_python(version: str) -> str | None:
    """An interpreter for ``version``: ``pythonX.Y`` on PATH, else a pyenv build; "system": /usr/bin/python3."""
    if version == "system":
        return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else None
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    builds = sorted(
        pyenv.glob(version + ".*/bin/python"),
        key=lambda path: [int(part) for part in path.parts[-3].split(".") if part.isdigit()],
    )
    if builds:
        return str(builds[-1])
    found = shutil.which("python" + version)
    return found if found and "/shims/" not in found else None  # a pyenv shim may point nowhere


def lint(python: Path) -> int:
    """mypy --strict on the library; ruff's checks and its formatting on all the Python of the repository."""
    print("dev.py: mypy --strict", flush=True)
    status = subprocess.call([str(python), "-m", "mypy"])
    checked = ["pacifica", "tests", "benchmarks", "examples", "docs", "dev.py", "conftest.py", "setup.py"]
    print("dev.py: ruff check", flush=True)
    status = subprocess.call([str(python), "-m", "ruff", "check", *checked]) or status
    print("dev.py: ruff format --check", flush=True)
    # One line a file, not each file's diff: `ruff format` with the same paths rewrites them.
    formatting = [str(python), "-m", "ruff", "format", "--check", "--output-format", "concise", *checked]
    return subprocess.call(formatting) or status


#: The docs' tools (the docs extra of pyproject.toml) need Python 3.11+; older ones install none and build no docs.
DOCS_PYTHON = (3, 11)


def docs(python: Path, sphinx_args: list[str]) -> int:
    """Build the HTML docs, every warning an error, as Read the Docs does (``fail_on_warning``)."""
    if sys.version_info < DOCS_PYTHON:
        print("dev.py: the docs need Python {}.{}+ (Sphinx 9); not built on this one".format(*DOCS_PYTHON), flush=True)
        return 0
    print("dev.py: sphinx-build -W (docs/_build/html)", flush=True)
    strict = ["-W", "--keep-going", "-b", "html"]
    return subprocess.call([str(python), "-m", "sphinx", *strict, *sphinx_args, "docs", "docs/_build/html"])


def other_pythons(pytest_args: list[str]) -> int:
    """Run the tests that need no server on every other supported Python this machine has."""
    status = 0
    for version in OTHER_PYTHONS:
        interpreter = find_python(version)
        if interpreter is None:
            print(f"dev.py: Python {version} not found; its server-free tests are skipped")
            continue
        env_dir = ROOT / f".venv-py{version}"
        python = venv_python(env_dir)
        marker = env_dir / "pacifica-dev.stamp"
        wanted = " ".join(OTHER_REQUIREMENTS) + (ROOT / "pyproject.toml").read_text()
        stamp = hashlib.sha256(wanted.encode()).hexdigest()
        if not (python.exists() and marker.exists() and marker.read_text() == stamp):
            print(f"dev.py: preparing {env_dir}", flush=True)
            subprocess.run([interpreter, "-m", "venv", "--clear", str(env_dir)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", str(ROOT)]
                + OTHER_REQUIREMENTS,
                check=True,
            )
            marker.write_text(stamp)
        print(f"dev.py: server-free tests on Python {version}", flush=True)
        status = (
            subprocess.call(
                [str(python), "-m", "pytest", "-q", "-m", "not stack", "-p", "no:cacheprovider"] + pytest_args
            )
            or status
        )
    return status


#: The least share of the library's lines the whole suite must run, in percent, or ``dev.py test`` fails. The
#: offline tests alone (-m "not stack") ran 90.3% on Python 3.11 and the whole suite runs those lines and more;
#: 87 leaves room for the figure to move a little. Code in child processes (download workers, the command line in
#: a child) is not measured.
COVERAGE_FLOOR = 87


def coverage_options(pytest_args: list[str]) -> list[str]:
    """pytest-cov's options: the figure always, the floor only for the whole suite (a selection runs less)."""
    options = ["--cov", "--cov-report=term"]
    return options if pytest_args else [*options, f"--cov-fail-under={COVERAGE_FLOOR}"]


#: The requests and urllib3 the package allows, at both ends: pyproject.toml's floors (requests 2.25.0 takes urllib3
#: below 1.27) and whatever is newest in the package index (unpinned, in a new venv).
DEPENDENCY_BOUNDS = {"oldest": ["requests==2.25.0", "urllib3==1.26.0"], "newest": ["requests", "urllib3"]}
#: The server-free tests that exercise requests and urllib3 most: the watchdog, faults, secrets, hostile servers,
#: the released API, the configuration, the public-interfaces check, polling and lost carts.
DEPENDENCY_TESTS = [
    "tests/test_watchdog.py",
    "tests/test_faults.py",
    "tests/test_secrets.py",
    "tests/test_hostile_servers.py",
    "tests/test_released_api.py",
    "tests/test_config.py",
    "tests/test_public_interfaces.py",
    "tests/test_polling.py",
    "tests/test_lost_carts.py",
]


def dependency_bounds(pytest_args: list[str]) -> int:
    """Run :data:`DEPENDENCY_TESTS` in a throwaway venv for each end of :data:`DEPENDENCY_BOUNDS`."""
    status = 0
    for end, pins in DEPENDENCY_BOUNDS.items():
        with tempfile.TemporaryDirectory(prefix=f"pacifica-deps-{end}-") as env_dir:
            python = venv_python(Path(env_dir))
            print(f"dev.py: a venv with the {end} {' and '.join(pins)}", flush=True)
            venv.EnvBuilder(with_pip=True).create(env_dir)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", str(ROOT)]
                + pins
                + OTHER_REQUIREMENTS,
                check=True,
            )
            subprocess.run(
                [
                    str(python),
                    "-c",
                    "import requests, urllib3; print('requests', requests.__version__, 'urllib3', urllib3.__version__)",
                ],
                check=True,
            )
            status = (
                subprocess.call(
                    [
                        str(python),
                        "-m",
                        "pytest",
                        "-q",
                        "-m",
                        "not stack",
                        "-p",
                        "no:cacheprovider",
                        *DEPENDENCY_TESTS,
                        *pytest_args,
                    ]
                )
                or status
            )
    return status


def main(argv: list[str]) -> int:
    """Run the task named by ``argv[0]``; the rest of ``argv`` goes to it."""
    tasks = {"demo", "test", "lint", "docs", "bench", "bench-workers", "deps"}
    if not argv or argv[0] not in tasks:
        print(__doc__)
        return 2
    task, rest = argv[0], argv[1:]
    if task == "deps":  # venvs of its own: .venv's requests and urllib3 are neither end
        os.chdir(ROOT)
        return dependency_bounds(rest)
    python = ensure_dev_venv()
    os.chdir(ROOT)
    if task == "lint":
        return lint(python)
    if task == "docs":
        return docs(python, rest)
    ensure_stack()
    if task == "demo":
        return subprocess.call([str(python), "examples/demo.py"] + rest)
    if task == "bench":
        return subprocess.call([str(python), "benchmarks/run.py"] + rest)
    if task == "bench-workers":
        return subprocess.call([str(python), "benchmarks/workers.py"] + rest)
    status = lint(python)
    status = docs(python, ["-q"]) or status
    print(f"dev.py: the whole suite on {sys.version.split()[0]}, with the real Cartd stack", flush=True)
    pytest = [str(python), "-m", "pytest", "-p", "no:cacheprovider", *coverage_options(rest)]
    status = subprocess.call(pytest + rest) or status
    return other_pythons(rest) or status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
