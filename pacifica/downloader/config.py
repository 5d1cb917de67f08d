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
      HEAD/POST at once and streams steadily, so a minute of silence is a hang.
    * ``wait=3600``: the deadline for a cart to become ready, in wall-clock
      time.  An hour covers a healthy cart of tens of thousands of files at
      the pace of one Celery worker.  The ``timeout`` argument of the download methods sets it
      per call.
    * ``stall=60``: during a transfer, the longest time allowed without
      ``stall_bytes`` (64 KiB) arriving; this catches a trickle that keeps a
      socket alive but would never finish.

    >>> Timeouts().replace(wait=600).wait
    600
    """

    connect: float = 10.0
    read: float = 60.0
    wait: float = 3600.0
    stall: float = 60.0
    stall_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        """Refuse non-positive limits."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Timeouts.{field.name} must be a positive number, got {value!r}")

    def replace(self, **changes: Any) -> Timeouts:
        """Return a copy with ``changes`` applied: ``Timeouts().replace(wait=600)``."""
        return dataclasses.replace(self, **changes)
