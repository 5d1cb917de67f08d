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

from ._exceptions import InvalidInputError

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
    """Every time bound of a download, in seconds: one name, one default, one meaning each.

    ============  ========  ==============================================================
    name          default   bounds
    ============  ========  ==============================================================
    ``connect``   10        opening a TCP/TLS connection
    ``read``      60        one silence on a socket (a wait for any byte)
    ``stall``     30        a transfer without 64 KiB of new bytes, before the stream is
                            resumed (``Range``) or started over
    ``progress``  60        the whole download without any progress (a request answered,
                            or 64 KiB of new stream bytes), retries included:
                            then :class:`TransferError`
    ``wait``      3600      a cart staging (wall clock, its spares included): then
                            :class:`CartTimeoutError`; the download methods' ``timeout=``
                            sets it per call
    ``deadline``  None      the whole call (wall clock; None: no bound of its own): then
                            :class:`CartTimeoutError`; the download methods'
                            ``deadline=`` sets it per call
    ============  ========  ==============================================================

    Why these defaults: a live server on any network connects within
    ``connect``; Cartd answers HEAD and POST at once and streams steadily, so
    a minute of silence is a hang (a busy SQLite Cartd may hold a POST for
    tens of seconds); ``stall`` catches a trickle that keeps a socket alive
    early enough that a second try fits in ``progress``; an hour of ``wait``
    covers a healthy cart of tens of thousands of files at the pace of one
    Celery worker.  So a download whose server never answers ends
    ``progress`` (60 s) after its last sign of progress, and one whose cart
    stays staging on a server that answers ends after ``wait``.

    What is done about a cart Cartd has lost is not a time bound but a
    policy: see :class:`LostCarts`.

    >>> Timeouts().replace(wait=600).wait
    600
    """

    connect: float = 10.0
    read: float = 60.0
    wait: float = 3600.0
    stall: float = 30.0
    progress: float = 60.0
    deadline: float | None = None

    def __post_init__(self) -> None:
        """Refuse non-positive limits."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name != "deadline" or value is not None:
                _check_positive(f"Timeouts.{field.name}", value)

    def replace(self, **changes: Any) -> Timeouts:
        """Return a copy with ``changes`` applied: ``Timeouts().replace(wait=600)``."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class LostCarts:
    """What is done about a cart that stays "staging": Cartd may have lost it, or may be slow.

    Cartd loses a cart's tasks now and then (on SQLite a write that meets
    its first task, a Celery worker killed while staging, a broker restarted
    with tasks queued), and the cart then answers "staging" for ever.  From
    the outside a lost cart looks like a slow one (a tape-backed archive
    takes minutes per file), so a lost cart is never given up: a **spare**
    of it, a second cart of the same files under a new id, is posted, and
    both are polled; the first that is ready is downloaded, and every other
    is deleted (its queued tasks are revoked with it).  A slow, healthy cart
    therefore keeps its place in the server's queue and whatever it staged;
    a lost one costs about :meth:`spare_after` seconds.

    * ``after=20``, ``per_file=0.1``: a spare is posted once the newest copy
      of a cart has been staging ``after + per_file * files`` seconds since
      it could begin (after the carts before it: see :mod:`.scheduler`).  A
      healthy Cartd stages a file in 35 to 100 ms on one Celery worker
      (``benchmarks/README.md``), so a cart still staging then is most likely
      lost.  It most often is on SQLite, Cartd's default database, where
      Cartd's POST handler can kill its own cart's first task ("database is
      locked"), one POST in two right after Cartd restarts.  A lost cart
      costs about ``after + per_file * files``; two in a row, the largest
      cart (250 files) included, less than 60 s + 0.2 s per file.
    * ``spares=3``: at most this many spares of one cart, so a server that
      is merely slow gets at most three carts more; after the last, the cart
      is waited for until ``Timeouts.wait`` (then :class:`CartTimeoutError`).
      0: never post a spare.
    * ``jitter=0.1``: each wait is randomly lengthened or shortened by up to
      a tenth, so that clients that lost their carts together do not post
      their spares together (on SQLite one POST kills the other's first
      task).

    The spares and their deletions are written when they cannot hit another
    cart's first task, as a DELETE is (see :mod:`.scheduler`); each is in the
    location's cart ledger before its POST, so none is orphaned, and each
    one posted is counted in :class:`Progress` ``spares``.

    >>> LostCarts().spare_after(10)
    21.0
    """

    after: float = 20.0
    per_file: float = 0.1
    spares: int = 3
    jitter: float = 0.1

    def __post_init__(self) -> None:
        """Refuse values that would make the rule meaningless."""
        _check_positive("LostCarts.after", self.after)
        if isinstance(self.per_file, bool) or not isinstance(self.per_file, (int, float)) or not self.per_file >= 0:
            raise ValueError(f"LostCarts.per_file must be a number >= 0, got {self.per_file!r}")
        if isinstance(self.spares, bool) or not isinstance(self.spares, int) or self.spares < 0:
            raise ValueError(f"LostCarts.spares must be an integer >= 0, got {self.spares!r}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter < 1:
            raise ValueError(f"LostCarts.jitter must be a number from 0 to below 1, got {self.jitter!r}")

    def spare_after(self, files: int, draw: float = 0.5) -> float:
        """Seconds a cart of ``files`` files stages before a spare is posted; ``draw`` in [0, 1) places the
        jitter (0.5: none)."""
        return (self.after + self.per_file * files) * (1.0 + self.jitter * (2.0 * draw - 1.0))

    def replace(self, **changes: Any) -> LostCarts:
        """Return a copy with ``changes`` applied: ``LostCarts().replace(spares=1)``."""
        return dataclasses.replace(self, **changes)


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
