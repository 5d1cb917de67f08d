#!/usr/bin/env python3
"""Set up everything and run one development task, with nothing but Python 3.9+ and git.

    python3 dev.py demo     # local Cartd stack + a demo download with progress
    python3 dev.py test     # the whole test suite (starts its own Cartd stack)
    python3 dev.py lint     # mypy --strict and ruff on the library
    python3 dev.py bench    # the benchmarks of benchmarks/ (see benchmarks/README.md)

It creates ``.venv`` (the library, editable, with its test tools) and
``.venv-stack`` (the Pacifica services, kept apart because they install a
``pacifica/__init__.py`` of their own), then runs the task in ``.venv``.
Every step is idempotent: a second run reuses what the first installed.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("PACIFICA_DEV_VENV", ROOT / ".venv"))
#: What the development environment needs besides the library itself.
DEV_REQUIREMENTS = [
    "pytest==9.2.0",
    "hypothesis==6.170.15",
    "tqdm==4.70.1",
    "mypy==2.4.1",
    "ruff==0.17.6",
    "types-requests==2.33.0.20261030",
    "cloudevents==2.2.0",
]


def venv_python(path: Path) -> Path:
    """The interpreter of the virtualenv at ``path``."""
    return path / ("Scripts" if os.name == "nt" else "bin") / "python"


def ensure_dev_venv() -> Path:
    """Create ``.venv`` with the library (editable) and the dev tools, unless already done."""
    python = venv_python(VENV)
    wanted = "\n".join(DEV_REQUIREMENTS + [(ROOT / "setup.cfg").read_text()])
    stamp = hashlib.sha256(wanted.encode()).hexdigest()
    marker = VENV / "pacifica-dev.stamp"
    if python.exists() and marker.exists() and marker.read_text() == stamp:
        return python
    if not python.exists():
        print("dev.py: creating {}".format(VENV), flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["-e", "{}[progress,test]".format(ROOT)] + DEV_REQUIREMENTS, check=True)
    marker.write_text(stamp)
    return python


def ensure_stack() -> None:
    """Create ``.venv-stack`` with the pinned Pacifica services (see tests/cartd_stack.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from cartd_stack import default_stack_venv_path, ensure_stack_venv

    ensure_stack_venv(default_stack_venv_path())


def main(argv: list[str]) -> int:
    """Run the task named by ``argv[0]``; the rest of ``argv`` goes to it."""
    tasks = {
        "demo": ["examples/demo.py"],
        "test": ["-m", "pytest"],
        "lint": ["-c", "import subprocess, sys; sys.exit("
                 "subprocess.call([sys.executable, '-m', 'mypy']) or "
                 "subprocess.call([sys.executable, '-m', 'ruff', 'check', 'pacifica', 'tests', 'benchmarks']))"],
        "bench": ["benchmarks/run.py"],
    }
    if not argv or argv[0] not in tasks:
        print(__doc__)
        return 2
    python = ensure_dev_venv()
    if argv[0] != "lint":
        ensure_stack()
    os.chdir(ROOT)
    return subprocess.call([str(python)] + tasks[argv[0]] + argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
