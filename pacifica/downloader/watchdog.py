"""Cut off a try whose answer does not come in time, even an answer trickled one byte at a time.

A socket's read timeout bounds each wait for bytes, not the whole answer: a
server that sends its status line and headers a byte every few seconds
keeps a request waiting for ever.  A :class:`Watch` covers one try of a
request: at its deadline it shuts that try's socket down, so the blocked
read returns at once and the try fails like a broken connection (the
transport then sees :attr:`Watch.fired` and says why).

The socket is found through :class:`WatchedAdapter`, the requests transport
adapter :func:`watch_session` mounts on a session in place of requests'
default one (same settings): its connection pools hand the connection a try
takes to the watch of the thread that takes it.  A session with adapters of
its own is left as it is; only the socket timeouts then bound its tries.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from types import TracebackType
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["Watch", "WatchedAdapter", "watch_session"]

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
        self._connection: Any = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def __enter__(self) -> Watch:
        """Arm the timer and become the thread's watch."""
        if self.deadline is not None:
            self._timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._fire)
            self._timer.daemon = True
            self._timer.start()
        _current.watch = self
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        """Disarm: the answer (or the error) is in; the connection goes on without a watch."""
        _current.watch = None
        with self._lock:
            self._connection = None
        if self._timer is not None:
            self._timer.cancel()

    def attach(self, connection: Any) -> None:
        """The try took ``connection``: cut it off at the deadline (at once if that has passed)."""
        with self._lock:
            self._connection = connection
            fired = self.fired
        if fired:
            _shut(connection)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            connection = self._connection
        if connection is not None:
            LOGGER.debug("cutting off a try that has had no answer by its deadline")
            _shut(connection)


def _shut(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


class _Watched:
    """A connection pool mixin: the connection a try takes is attached to the thread's watch."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)  # type: ignore[misc]
        watch = getattr(_current, "watch", None)
        if watch is not None:
            watch.attach(connection)
        return connection


class _WatchedHTTPPool(_Watched, HTTPConnectionPool):
    pass


class _WatchedHTTPSPool(_Watched, HTTPSConnectionPool):
    pass


_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """requests' default adapter, whose connections a :class:`Watch` can cut off."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Make the pool manager, with watched pools."""
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """Make a proxy's pool manager, with watched pools."""
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


def watch_session(session: requests.Session) -> requests.Session:
    """Mount :class:`WatchedAdapter` for http and https where ``session`` has requests' default adapter."""
    for prefix in ("http://", "https://"):
        adapter = session.adapters.get(prefix)
        if type(adapter) is HTTPAdapter:
            watched = WatchedAdapter(  # the same settings (requests keeps them in private attributes)
                pool_connections=getattr(adapter, "_pool_connections", requests.adapters.DEFAULT_POOLSIZE),
                pool_maxsize=getattr(adapter, "_pool_maxsize", requests.adapters.DEFAULT_POOLSIZE),
                max_retries=adapter.max_retries,
                pool_block=getattr(adapter, "_pool_block", requests.adapters.DEFAULT_POOLBLOCK),
            )
            session.mount(prefix, watched)
            adapter.close()
    return session
