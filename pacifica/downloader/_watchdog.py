"""Cut off a try whose answer does not come in time, even an answer trickled one byte at a time.

A socket's read timeout bounds each wait for bytes, not the whole answer: a
server that sends its status line and headers a byte every few seconds
keeps a request waiting for ever.  A :class:`Watch` covers one try of a
request: at its deadline it shuts that try's socket down, so the blocked
read returns at once and the try fails like a broken connection (the
transport then sees :attr:`Watch.fired` and says why).

The socket is found through :class:`WatchedAdapter`, the requests transport
adapter :func:`watch_session` mounts on a session in place of requests'
default one (same settings): its connection pools make connections of a
watched class (urllib3's ``ConnectionCls``), which hand themselves to the
watch of the thread that sends a request on them.  Only public interfaces of
requests and urllib3, so that any version the package allows works the same
(``tests/test_public_interfaces.py``).  A session with adapters of its own is
left as it is; only the socket timeouts then bound its tries.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import socket
import threading
import time
from types import TracebackType
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3 import PoolManager
from urllib3.connectionpool import HTTPConnectionPool

LOGGER = logging.getLogger(__name__)

_current = threading.local()


class Watch:
    """Shut the socket of the current thread's try down at ``deadline`` (monotonic; None: never).

    >>> with Watch(None) as watch:   # doctest: +SKIP
    ...     session.get(url)
    """

    def __init__(self, deadline: float | None) -> None:
        """Prepare to cut the try off at ``deadline``."""
        self.deadline = deadline
        self.fired = False
        self.disarmed = False
        self._connection: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> Watch:
        """Arm the watch and become the thread's watch."""
        if self.deadline is not None:
            _WATCHDOG.arm(self.deadline, self)
        _current.watch = self
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        """Disarm: the answer (or the error) is in; the connection goes on without a watch."""
        _current.watch = None
        with self._lock:
            self._connection = None
            self.disarmed = True

    def attach(self, connection: Any) -> None:
        """The try took ``connection``: cut it off at the deadline (at once if that has passed)."""
        with self._lock:
            self._connection = connection
            fired = self.fired
        if fired:
            _shut(connection)

    def fire(self) -> None:
        """The deadline has come: cut the try off, unless the answer is in already."""
        with self._lock:
            if self.disarmed:
                return
            self.fired = True
            connection = self._connection
        if connection is not None:
            LOGGER.debug("cutting off a try that has had no answer by its deadline")
            _shut(connection)


class _Watchdog:
    """One thread for every watch of the process: a heap of deadlines, the earliest waited for.

    A thread per try cost more than half a millisecond, on every status poll.
    Disarmed watches stay in the heap until their deadline, and are dropped
    then without being fired.
    """

    def __init__(self) -> None:
        self._order = itertools.count()  # equal deadlines never compare the watches themselves
        self.reset()

    def reset(self) -> None:
        """Start afresh; in a forked child (a Celery pool's) the parent's thread and lock state are not its own."""
        self._changed = threading.Condition()
        self._heap: list[tuple[float, int, Watch]] = []
        self._started = False

    def arm(self, deadline: float, watch: Watch) -> None:
        with self._changed:
            if not self._started:
                self._started = True
                threading.Thread(target=self._run, name="pacifica-downloader-watchdog", daemon=True).start()
            heapq.heappush(self._heap, (deadline, next(self._order), watch))
            if self._heap[0][2] is watch:
                self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                due = []
                while self._heap and (self._heap[0][0] <= now or self._heap[0][2].disarmed):
                    due.append(heapq.heappop(self._heap)[2])
                if not due:
                    self._changed.wait(self._heap[0][0] - now if self._heap else None)
                    continue
            for watch in due:
                watch.fire()


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WATCHDOG.reset)


def _shut(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


def _hand_to_watch(connection: object) -> None:
    watch = getattr(_current, "watch", None)
    if watch is not None:
        watch.attach(connection)


class WatchedConnection:
    """A mixin for a urllib3 connection class: the connection a try uses is handed to the thread's watch.

    Every request on a connection, a new one or a kept-alive one, starts with
    http.client's ``putrequest`` (public, as is ``connect``).  A new
    connection connects just before or during it, and hands itself over
    again once it has a socket: a watch that fired while it was connecting
    cuts it off then.
    """

    def connect(self) -> None:
        """Connect, then let the thread's watch cut the new socket off."""
        super().connect()  # type: ignore[misc]
        _hand_to_watch(self)

    def putrequest(self, *args: Any, **kwargs: Any) -> None:
        """Start a request: this connection is the try's, the thread's watch may cut it off."""
        _hand_to_watch(self)
        super().putrequest(*args, **kwargs)  # type: ignore[misc]


#: The watched subclass of each pool class a pool manager was found with, made once.
_WATCHED_POOLS: dict[type[HTTPConnectionPool], type[HTTPConnectionPool]] = {}
_WATCHED_POOLS_LOCK = threading.Lock()


def _watched_pool(pool: type[HTTPConnectionPool]) -> type[HTTPConnectionPool]:
    """A subclass of ``pool`` whose connections (``ConnectionCls``) are a watched subclass of its own.

    Subclassing the class the manager has, rather than urllib3's plain ones,
    keeps what the manager's pools do: a SOCKS proxy manager's connect
    through the proxy.
    """
    if issubclass(pool.ConnectionCls, WatchedConnection):
        return pool
    with _WATCHED_POOLS_LOCK:
        watched = _WATCHED_POOLS.get(pool)
        if watched is None:
            base = pool.ConnectionCls
            connection = type("Watched" + base.__name__, (WatchedConnection, base), {"__module__": __name__})
            watched = _WATCHED_POOLS[pool] = type(
                "Watched" + pool.__name__, (pool,), {"ConnectionCls": connection, "__module__": __name__}
            )
        return watched


def watch_pools(manager: PoolManager) -> PoolManager:
    """Make the pools ``manager`` creates from now on watched ones (urllib3's ``pool_classes_by_scheme``)."""
    manager.pool_classes_by_scheme = {
        scheme: _watched_pool(pool) for scheme, pool in manager.pool_classes_by_scheme.items()
    }
    return manager


class WatchedAdapter(HTTPAdapter):
    """requests' default adapter, whose connections a :class:`Watch` can cut off.

    Only requests' documented hooks for subclasses: the pool managers it
    makes, direct and per proxy, are given watched pools.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Make the pool manager, with watched pools."""
        super().init_poolmanager(*args, **kwargs)
        watch_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """Make (or reuse) a proxy's pool manager, with watched pools."""
        return watch_pools(super().proxy_manager_for(proxy, **proxy_kwargs))

    @classmethod
    def like(cls, adapter: HTTPAdapter) -> WatchedAdapter:
        """A watched adapter with every setting of ``adapter`` (pool sizes, blocking, retries).

        requests keeps the pool settings in no public attribute; its pickle
        support (``__getstate__``/``__setstate__``) carries them all, so the
        copy is made as unpickling makes one, without naming any of them.
        """
        watched = cls.__new__(cls)
        watched.__setstate__(adapter.__getstate__())  # type: ignore[attr-defined]
        return watched


def watch_session(session: requests.Session) -> requests.Session:
    """Mount :class:`WatchedAdapter` for http and https where ``session`` has requests' default adapter."""
    for prefix in ("http://", "https://"):
        adapter = session.adapters.get(prefix)
        if type(adapter) is HTTPAdapter:
            session.mount(prefix, WatchedAdapter.like(adapter))
            adapter.close()
    return session
