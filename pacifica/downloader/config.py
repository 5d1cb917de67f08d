"""Where the cart service is, and how long to wait for it.

:func:`resolve_cart_url` applies the environment defaults the released
versions used; :class:`Timeouts` holds every time limit in one immutable
value, with defaults explained below.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from .exceptions import InvalidInputError

__all__ = ["DEFAULT_CART_API_URL", "Timeouts", "resolve_cart_url"]

DEFAULT_CART_API_URL = "http://127.0.0.1:8081"


def resolve_cart_url(cart_api_url: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Return the Cartd endpoint: the argument, else ``CARTD_CART_API_URL``,
    else ``CARTD_PROTO://CARTD_ADDR:CARTD_PORT`` (default ``http://127.0.0.1:8081``).

    >>> resolve_cart_url("http://cart.example.org/cart/")
    'http://cart.example.org/cart'
    """
    env = os.environ if environ is None else environ
    url = cart_api_url or env.get("CARTD_CART_API_URL")
    if not url:
        url = "{}://{}:{}".format(
            env.get("CARTD_PROTO", "http"), env.get("CARTD_ADDR", "127.0.0.1"), env.get("CARTD_PORT", "8081")
        )
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidInputError(f"the cart API URL must start with http:// or https://, got {url!r}")
    return url.rstrip("/")


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Every time limit of a download, in seconds.

    * ``connect=10``: opening a TCP/TLS connection; a live server on any
      network answers well within it.
    * ``read=60``: the longest silence tolerated on a socket; Cartd answers
      HEAD/POST at once and streams steadily, so a minute of silence is a hang.
    * ``wait=3600``: the deadline for a cart to become ready, in wall-clock
      time.  One Celery worker stages about 10 files a second, so an hour
      covers a healthy cart of tens of thousands of files; 2000 files need
      about 200 s.  The ``timeout`` argument of the download methods sets it
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
