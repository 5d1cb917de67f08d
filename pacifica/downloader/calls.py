"""The ways the released API may be called, sorted into one shape; anything else is an InvalidInputError.

``cloudevent(event)`` (the seed's style), ``cloudevent(location, event)``
and ``location=`` (0.4), and ``_download_from_url``'s two signatures (0.4.1's
``(location, cart_url, filename)`` and 0.3.0's ``(cart_url, filename)``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

from .exceptions import InvalidInputError

__all__ = ["PathLike", "as_path", "call_style", "url_call_style"]

PathLike = Union[str, "os.PathLike[str]"]


def call_style(args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> tuple[PathLike | None, Any, dict[str, Any]]:
    """Sort out ``(event)``, ``(location, event)`` and keyword calls; the location is None in the first."""
    location = kwargs.pop("location", None)
    if len(args) == 2 and location is None:
        location, document = args
    elif len(args) == 1 and name in kwargs:
        location, document = args[0], kwargs.pop(name)
    elif len(args) == 1:
        document = args[0]
    elif not args and name in kwargs:
        document = kwargs.pop(name)
    else:
        raise InvalidInputError(
            f"{name}() takes the {name} and optionally the location before it",
            [f"{len(args)} positional arguments, keywords: {sorted(kwargs) or 'none'}"],
        )
    unknown = sorted(set(kwargs) - {"filename", "timeout", "deadline"})
    if unknown:
        raise InvalidInputError(
            f"{name}() takes only the keywords filename, timeout and deadline",
            [f"unexpected keyword {key!r}" for key in unknown],
        )
    return location, document, kwargs


def as_path(location: Any) -> Path:
    """The download directory given as a string or path; anything else is refused."""
    if isinstance(location, bytes) or not isinstance(location, (str, os.PathLike)):
        raise InvalidInputError(f"the location must be a path (str or os.PathLike), not {type(location).__name__}")
    return Path(location)


def url_call_style(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``(location, cart_url, filename)`` from 0.4.1's three arguments or 0.3.0's ``(cart_url, filename)``."""
    three = len(args) + len(kwargs) >= 3 or "location" in kwargs
    names = ("location", "cart_url", "filename") if three else ("cart_url", "filename")
    given = dict(zip(names, args))
    problems = [f"{len(args)} positional arguments, at most {len(names)}"] if len(args) > len(names) else []
    problems += [f"{key!r} given twice" for key in kwargs if key in given]
    problems += [f"unexpected keyword {key!r}" for key in kwargs if key not in names]
    given.update(kwargs)
    if "cart_url" not in given:
        problems.append("no cart_url")
    if problems:
        raise InvalidInputError(
            "_download_from_url() takes (location, cart_url, filename), or (cart_url, filename) "
            "on a downloader built with its location", problems,
        )
    return given.get("location"), given["cart_url"], given.get("filename", "data")
