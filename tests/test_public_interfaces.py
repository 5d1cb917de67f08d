"""Only public interfaces of requests and urllib3: any version the package allows then works the same.

The library's source is scanned for private attributes (``._name``, ``getattr(x, "_name")``,
``super()._name``, ``from urllib3.x import _name``) of requests' and urllib3's objects; and the watchdog's
hooks (a watched ``ConnectionCls`` in every pool the watched adapter makes) are checked to be in place and
to cut off a try on a new connection and on a kept-alive one.
"""

from __future__ import annotations

import ast
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool

import pacifica.downloader
from pacifica.downloader._watchdog import Watch, WatchedAdapter, WatchedConnection, watch_pools, watch_session

LIBRARY = Path(pacifica.downloader.__file__).parent
UPSTREAM = ("requests", "urllib3")
#: (file under pacifica/downloader, name): our own objects' private names that requests or urllib3 also use;
#: none so far.
ALLOWED: set[tuple[str, str]] = set()


def _private(name: str) -> bool:
    """A private name: a leading underscore, not a dunder (``__getstate__`` is Python's protocol, public)."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _bound_names(tree: ast.AST) -> set[str]:
    """Every name a module's code defines or assigns: functions, classes, variables, attributes, arguments."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {name for name in names if _private(name)}


def _trees(root: Path) -> Iterator[tuple[Path, ast.AST]]:
    for path in sorted(root.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def upstream_private_names() -> set[str]:
    """The private names requests and urllib3 (the installed versions) define anywhere."""
    names: set[str] = set()
    for module in (requests, urllib3):
        for _, tree in _trees(Path(module.__file__ or "").parent):
            names |= _bound_names(tree)
    return names


def _root(node: ast.expr) -> ast.expr:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def private_uses(tree: ast.AST, theirs: set[str]) -> list[tuple[int, str]]:
    """(line, name) of each private attribute of requests' or urllib3's objects ``tree`` uses.

    An attribute of a name imported from requests or urllib3 is theirs whatever its name; one of a name
    imported from elsewhere (``zlib._Decompress``) is not; on ``self`` or ``cls`` it is ours when the class
    sets it or defines it itself; on anything else (a response, ``super()``, a string in ``getattr``) it is
    theirs when requests or urllib3 define that name.
    """
    imported: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imported[(alias.asname or alias.name).split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                imported[alias.asname or alias.name] = node.module.split(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.level == 0):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            names = [alias.name for alias in node.names] if isinstance(node, ast.ImportFrom) else []
            for module in modules:
                if module.split(".")[0] in UPSTREAM:
                    found += [(node.lineno, part) for part in [*module.split("."), *names] if _private(part)]

    def visit(node: ast.AST, own: set[str] | None) -> None:
        """``own``: the private names the innermost class around ``node`` sets or defines (None: no class)."""
        if isinstance(node, ast.ClassDef):
            own = _bound_names(node)
        target: tuple[str, ast.expr] | None = None
        if isinstance(node, ast.Attribute) and _private(node.attr):
            target = node.attr, _root(node.value)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            target = node.args[1].value, _root(node.args[0])
        if target is not None:
            name, root = target
            origin = imported.get(root.id) if isinstance(root, ast.Name) else None
            if origin in UPSTREAM:
                found.append((getattr(node, "lineno", 0), name))
            elif origin is not None:
                pass  # another module's (the standard library's): not this test's business
            elif isinstance(root, ast.Name) and root.id in ("self", "cls") and own is not None:
                if name in theirs and name not in own:
                    found.append((getattr(node, "lineno", 0), name))
            elif name in theirs:
                found.append((getattr(node, "lineno", 0), name))
        for child in ast.iter_child_nodes(node):
            visit(child, own)

    visit(tree, None)
    return sorted(set(found))


def test_the_library_uses_no_private_name_of_requests_or_urllib3() -> None:
    theirs = upstream_private_names()
    found = [
        f"{path.relative_to(LIBRARY)}:{line}: {name}"
        for path, tree in _trees(LIBRARY)
        for line, name in private_uses(tree, theirs)
        if (str(path.relative_to(LIBRARY)), name) not in ALLOWED
    ]
    assert not found, "private names of requests or urllib3:\n" + "\n".join(found)


def test_the_scan_finds_what_the_watchdog_once_used() -> None:
    """The scan itself can fail: the former watchdog's hooks are each found."""
    old = """
import requests
from requests.adapters import HTTPAdapter
from urllib3.util import _private_helper

class Pool(HTTPConnectionPool):
    def _get_conn(self, timeout=None):
        return super()._get_conn(timeout)

class Mine:
    def __init__(self):
        self._lock = None

    def use(self, adapter, response):
        self._lock = adapter._pool_maxsize
        return getattr(adapter, "_pool_block", False), response.raw._fp, HTTPAdapter._pool_connections

class Unset:
    def read(self):
        return self._fp
"""
    found = {name for _, name in private_uses(ast.parse(old), upstream_private_names())}
    assert found == {"_private_helper", "_get_conn", "_pool_maxsize", "_pool_block", "_fp", "_pool_connections"}


def _watched(pool: HTTPConnectionPool, base: type) -> bool:
    return issubclass(pool.ConnectionCls, WatchedConnection) and issubclass(pool.ConnectionCls, base)


def test_the_watched_adapters_pools_use_the_watched_connection_classes() -> None:
    session = watch_session(requests.Session())
    for adapter in (session.get_adapter("http://cartd.example/"), session.get_adapter("https://cartd.example/")):
        assert isinstance(adapter, WatchedAdapter)
        assert _watched(adapter.poolmanager.connection_from_url("http://cartd.example/"), HTTPConnection)
        assert _watched(adapter.poolmanager.connection_from_url("https://cartd.example/"), HTTPSConnection)
        proxy = adapter.proxy_manager_for("http://proxy.example:3128")
        assert _watched(proxy.connection_from_url("http://cartd.example/"), HTTPConnection)
        assert _watched(proxy.connection_from_url("https://cartd.example/"), HTTPSConnection)


def test_a_managers_own_pool_classes_are_watched_not_replaced() -> None:
    """A pool manager with pools of its own (a SOCKS proxy's) keeps them: its watched pools subclass them."""

    class OwnConnection(HTTPConnection):
        pass

    class OwnPool(HTTPConnectionPool):
        ConnectionCls = OwnConnection

    class OwnManager(urllib3.PoolManager):
        def __init__(self) -> None:
            super().__init__()
            self.pool_classes_by_scheme = {"http": OwnPool}  # as urllib3's SOCKSProxyManager sets its own

    manager = watch_pools(watch_pools(OwnManager()))
    pool = manager.connection_from_url("http://cartd.example/")
    assert isinstance(pool, OwnPool) and _watched(pool, OwnConnection)
    assert pool.ConnectionCls.__mro__.count(WatchedConnection) == 1, "watched twice"


class SilentServer:
    """A loopback server that answers ``answers`` requests on its first connection, then says nothing."""

    def __init__(self, answers: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.answers = answers
        if answers:
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection, connection.makefile("rb") as reader:
            for _ in range(self.answers):
                while reader.readline() not in (b"\r\n", b""):
                    pass
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            reader.read()  # nothing more is said, until the client hangs up

    def close(self) -> None:
        self.listener.close()


#: Socket waits far longer than the test: only the watch can end the try in time.
LONG = (20.0, 20.0)


@pytest.mark.parametrize("answered_first", [False, True], ids=["new connection", "kept-alive connection"])
def test_a_watch_past_its_deadline_cuts_the_try_off(answered_first: bool) -> None:
    server = SilentServer(answers=1 if answered_first else 0)
    try:
        session = watch_session(requests.Session())
        if answered_first:
            assert session.get(server.url, timeout=LONG).content == b"ok"  # the connection is kept alive
        with Watch(time.monotonic()) as watch, pytest.raises(requests.RequestException) as raised:
            session.get(server.url, timeout=LONG)
        assert watch.fired
        assert isinstance(raised.value, requests.ConnectionError), f"not cut off: {raised.value!r}"
        assert not isinstance(raised.value, requests.Timeout), f"not cut off: {raised.value!r}"
    finally:
        server.close()
