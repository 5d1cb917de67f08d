"""pytest's view of the whole tree (the fixtures are in tests/conftest.py).

The doctests of ``pacifica/`` are collected by importing each module; the
Celery tasks module needs the optional ``celery`` extra, which the
server-free runs on other Pythons do not install.
"""
from __future__ import annotations

import importlib.util

collect_ignore = [] if importlib.util.find_spec("celery") else ["pacifica/downloader/tasks.py"]
