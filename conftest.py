"""pytest's view of the whole tree (the fixtures are in tests/conftest.py).

Doctests are collected by importing every module of the test paths; the
Celery tasks module, and the tests' module that starts download workers,
need the optional ``celery`` extra, which the server-free runs on other
Pythons do not install.
"""

from __future__ import annotations

import importlib.util

NEEDS_CELERY = ["pacifica/downloader/tasks.py", "tests/support/download_workers.py"]
collect_ignore = [] if importlib.util.find_spec("celery") else NEEDS_CELERY
