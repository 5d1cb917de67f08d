"""Credentials and TLS settings for the command, from the environment only (never the command line)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .._exceptions import InvalidInputError

ENV_USER = "PACIFICA_DOWNLOADER_USER"
ENV_PASSWORD = "PACIFICA_DOWNLOADER_PASSWORD"
ENV_TOKEN = "PACIFICA_DOWNLOADER_TOKEN"
ENV_CERT = "PACIFICA_DOWNLOADER_CERT"
ENV_KEY = "PACIFICA_DOWNLOADER_KEY"


def auth_from_environment(
    environ: Mapping[str, str], *, ca_bundle: str | None = None, insecure: bool = False
) -> dict[str, Any]:
    """Return the requests arguments for the credentials in ``environ`` and the TLS options.

    The result is the ``auth`` dict :class:`Downloader` takes (``auth``,
    ``headers``, ``cert``, ``verify``); empty when nothing is set.  Raises
    :class:`InvalidInputError` for an incomplete or contradictory setting or
    a file that does not exist.  Empty variables count as unset.

    >>> auth_from_environment({"PACIFICA_DOWNLOADER_TOKEN": "t0k"})
    {'headers': {'Authorization': 'Bearer t0k'}}
    """

    def get(name: str) -> str | None:
        return environ.get(name) or None

    user, password, token = get(ENV_USER), get(ENV_PASSWORD), get(ENV_TOKEN)
    cert, key = get(ENV_CERT), get(ENV_KEY)
    result: dict[str, Any] = {}
    if (user is None) != (password is None):
        missing = ENV_PASSWORD if password is None else ENV_USER
        present = ENV_USER if password is None else ENV_PASSWORD
        raise InvalidInputError(f"{present} is set but {missing} is not; set both for basic authentication")
    if user is not None and token is not None:
        raise InvalidInputError(f"set either {ENV_USER}/{ENV_PASSWORD} (basic) or {ENV_TOKEN} (bearer), not both")
    if user is not None:
        result["auth"] = (user, password)
    if token is not None:
        result["headers"] = {"Authorization": f"Bearer {token}"}
    if key is not None and cert is None:
        raise InvalidInputError(f"{ENV_KEY} is set but {ENV_CERT} is not")
    if cert is not None:
        for name, path in ((ENV_CERT, cert), (ENV_KEY, key)):
            if path is not None and not os.path.isfile(path):
                raise InvalidInputError(f"{name} names no file: {path}")
        result["cert"] = cert if key is None else (cert, key)
    if ca_bundle is not None and insecure:
        raise InvalidInputError("--ca-bundle and --insecure contradict each other")
    if ca_bundle is not None:
        if not os.path.exists(ca_bundle):
            raise InvalidInputError(f"--ca-bundle names no file or directory: {ca_bundle}")
        result["verify"] = ca_bundle
    elif insecure:
        result["verify"] = False
    return result
