"""Shared pytest fixtures.

``cartd_stack`` runs one real Pacifica Cartd stack (see ``cartd_stack.py``) for
the whole session; ``facility`` one real Pacifica facility (Ingest, Metadata,
Policy, Notifications, UniqueID around a Cartd stack of its own: see
``facility_stack.py``), started the first time a test asks for it. When any
test fails or errors, the stacks' service logs are copied to
``<repo>/test-logs/`` so a failed CI run keeps them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cartd_stack import REPO_ROOT, CartdStack, default_stack_venv_path, ensure_stack_venv
from support.facility_stack import FacilityStack, ensure_facility_venv

#: Where the logs of a failed session's stacks are kept.
TEST_LOGS_DIR: Path = REPO_ROOT / "test-logs"

_STACKS = pytest.StashKey[list[CartdStack]]()


@pytest.fixture(scope="session")
def cartd_stack(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[CartdStack]:
    """A running Cartd stack shared by the session (``cart_url``, ``bundle_cart_url``, ``put_files`` ...)."""
    bin_dir = ensure_stack_venv(default_stack_venv_path())
    stack = CartdStack(tmp_path_factory.mktemp("cartd-stack"), bin_dir)
    pytestconfig.stash.setdefault(_STACKS, []).append(stack)
    with stack:
        yield stack


@pytest.fixture(scope="session")
def facility(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[FacilityStack]:
    """A running Pacifica facility shared by the session (``upload``, ``policy_url``, ``notifications_url`` ...)."""
    stack = FacilityStack(
        tmp_path_factory.mktemp("facility"), ensure_stack_venv(default_stack_venv_path()), ensure_facility_venv()
    )
    pytestconfig.stash.setdefault(_STACKS, []).append(stack)
    with stack:
        yield stack


#: The fixtures that start real services: a test using one, directly or through another fixture, is marked
#: ``stack``.  A test that starts a stack itself, or needs a Pacifica venv, carries the mark explicitly.
STACK_FIXTURES = {"cartd_stack", "facility"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a real stack ``stack``, so ``-m "not stack"`` runs the others."""
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    """Say how long the stack took to start; keep its logs in test-logs/ if anything failed."""
    stacks = config.stash.get(_STACKS, [])
    for stack in stacks:
        if stack.startup_seconds is not None:
            terminalreporter.write_line(
                f"{type(stack).__name__} started in {stack.startup_seconds:.1f}s ({stack.workdir})"
            )
    if not stacks or not (terminalreporter.stats.get("failed") or terminalreporter.stats.get("error")):
        return
    for stack in stacks:
        if stack.log_dir.is_dir():
            destination = TEST_LOGS_DIR / stack.workdir.name
            shutil.copytree(stack.log_dir, destination, dirs_exist_ok=True)
            terminalreporter.write_line(f"cartd stack logs copied to {destination}", yellow=True, bold=True)
