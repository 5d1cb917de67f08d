"""Where the cart service is, and how long to wait for it.

:func:`resolve_cart_url` applies the environment defaults the released
versions used; :class:`Timeouts` holds every time limit in one immutable
value, with defaults explained below.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

from .exceptions import InvalidInputError

__all__ = ["DEFAULT_CART_API_URL", "Timeouts", "check_seconds", "resolve_cart_url"]

DEFAULT_CART_API_URL = "http://127.0.0.1:8081"


def resolve_cart_url(
    cart_api_url: str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    proto: str | None = None,
    addr: str | None = None,
    port: int | str | None = None,
) -> str:
    """Return the Cartd endpoint, with the precedence of the released 0.4 versions.

    The ``cart_api_url`` argument, else ``CARTD_CART_API_URL``; else the URL
    is built from three parts, each the argument (``proto``, ``addr``,
    ``port``), else ``CARTD_PROTO``, ``CARTD_ADDR``, ``CARTD_PORT``, else
    ``http``, ``127.0.0.1``, ``8081``.  As in 0.4.1, ``CARTD_CART_API_URL``
    beats the parts given as arguments.  An IPv6 ``addr`` gets its brackets.

    >>> resolve_cart_url("http://cart.example.org/cart/")
    'http://cart.example.org/cart'
    >>> resolve_cart_url(environ={}, proto="https", addr="::1", port=8443)
    'https://[::1]:8443'
    """
    env = os.environ if environ is None else environ
    url = cart_api_url or env.get("CARTD_CART_API_URL")
    if not url:
        scheme = proto or env.get("CARTD_PROTO", "http")
        host = addr or env.get("CARTD_ADDR", "127.0.0.1")
        number = port or env.get("CARTD_PORT", "8081")
        problems = _part_problems(scheme, host, number)
        if problems:
            raise InvalidInputError("the Cartd address cannot be built from its parts", problems)
        if ":" in str(host) and not str(host).startswith("["):
            host = f"[{host}]"
        url = f"{scheme}://{host}:{number}"
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidInputError(f"the cart API URL must start with http:// or https://, got {url!r}")
    return url.rstrip("/")


def _part_problems(proto: Any, addr: Any, port: Any) -> list[str]:
    """What is wrong with the parts of a Cartd URL (``proto``, ``addr``, ``port``), if anything."""
    problems = []
    if proto not in ("http", "https"):
        problems.append(f"proto must be 'http' or 'https', got {proto!r}")
    if not isinstance(addr, str) or not addr or any(char in addr for char in "/?#@ "):
        problems.append(f"addr must be a host name or address, got {addr!r}")
    text = str(port) if isinstance(port, (int, str)) and not isinstance(port, bool) else ""
    if not (text.isdigit() and 0 < int(text) < 65536):
        problems.append(f"port must be a number from 1 to 65535, got {port!r}")
    return problems


def check_seconds(value: Any, name: str) -> float:
    """Return ``value`` as a positive number of seconds, or raise :class:`InvalidInputError` naming ``name``.

    Numbers and numeric strings are taken, as the released versions passed
    ``int(kwargs["timeout"])`` along.

    >>> check_seconds("600", "timeout")
    600.0
    """
    try:
        seconds = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        seconds = math.nan
    if not seconds > 0:
        raise InvalidInputError(f"{name} must be a positive number of seconds, got {value!r}")
    return seconds


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Every time limit of a download, in seconds.

    * ``connect=10``: opening a TCP/TLS connection; a live server on any
      network answers well within it.
    * ``read=60``: the longest silence tolerated on a socket; Cartd answers
      HEAD/POST at once and streams steadily, so a minute of silence is a
      hang (a busy SQLite Cartd may hold a POST for tens of seconds).
    * ``progress=60``: the longest the server may go without a sign of
      progress (a request answered, or ``stall_bytes`` of stream bytes never
      received before) before the download fails with
      :class:`TransferError`, counted over the whole download, not per try:
      retries, resumes and restarts happen inside it, and a request still
      waiting for its answer (or for the rest of its headers) when it ends is
      cut off.  A download whose server never answers ends 60 s after the
      call; a cart that stages slowly is not affected, each poll answered is
      progress.
    * ``wait=3600``: the deadline for a cart to become ready, in wall-clock
      time, re-posts included.  An hour covers a healthy cart of tens of
      thousands of files at the pace of one Celery worker.  The ``timeout``
      argument of the download methods sets it per call.
    * ``stall=30``: during a transfer, the longest time allowed without
      ``stall_bytes`` (64 KiB) arriving before the stream is resumed or
      started over; this catches a trickle that keeps a socket alive but
      would never finish, early enough that a second try fits in
      ``progress``.
    * **Lost carts.**  Cartd can lose a cart's tasks (on SQLite a write that
      meets its first task, a Celery worker killed while staging, a broker
      restarted with tasks queued): the cart then answers "staging" for
      ever.  A cart is suspected lost once it has staged ``lost_factor``
      (4) times as long as the download's earlier carts took for as many
      files or bytes (the larger of the two), but never sooner than
      ``lost_floor=60`` s; while no cart of the download has been ready yet
      (a first cart, a download of one cart), only after ``lost=600`` s, so
      that a healthy slow server (a tape-backed archive takes minutes per
      file) is not flooded.  A suspected cart is posted again under the same
      id (Cartd adds a new row and new tasks and answers for the newest;
      nothing is revoked, so work still under way on the old row goes on,
      and the final DELETE removes both), each time logged at WARNING and
      counted in :class:`Progress` ``reposts``, and the next suspicion comes
      twice as late.  After ``reposts=2`` re-posts, the next suspicion ends
      the download with :class:`CartTimeoutError`, as does ``wait``.

    >>> Timeouts().replace(wait=600).wait
    600
    """

    connect: float = 10.0
    read: float = 60.0
    wait: float = 3600.0
    stall: float = 30.0
    stall_bytes: int = 64 * 1024
    progress: float = 60.0
    lost: float = 600.0
    lost_factor: float = 4.0
    lost_floor: float = 60.0
    reposts: int = 2

    def __post_init__(self) -> None:
        """Refuse non-positive limits (``reposts`` may be 0: never re-post)."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "reposts":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"Timeouts.reposts must be an integer >= 0, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Timeouts.{field.name} must be a positive number, got {value!r}")

    def lost_after(self, expected: float | None, reposts: int) -> float:
        """Seconds of staging after which a cart is suspected lost, after ``reposts`` re-posts so far.

        ``expected``: how long the download's earlier carts say this one
        should take (None: no cart has been ready yet).

        >>> Timeouts().lost_after(None, 0), Timeouts().lost_after(10.0, 0), Timeouts().lost_after(30.0, 1)
        (600.0, 60.0, 240.0)
        """
        base = self.lost if expected is None else max(self.lost_floor, self.lost_factor * expected)
        return base * 2.0 ** reposts

    def replace(self, **changes: Any) -> Timeouts:
        """Return a copy with ``changes`` applied: ``Timeouts().replace(wait=600)``."""
        return dataclasses.replace(self, **changes)
