"""The download service's bearer token: who may POST events to it.

The token comes from the environment only, never from the command line
(where every user of the machine could read it): ``DOWNLOADER_SERVE_TOKEN``,
or the file named by ``DOWNLOADER_SERVE_TOKEN_FILE`` (its first line).  A
request is let in when its ``Authorization`` header is ``Bearer <token>``,
compared in constant time.  :class:`BearerToken` never shows its value: not
in ``repr``, logs or answers.  The same token is what ``pacifica-downloader
subscribe`` gives Notifications as the event match's ``auth``.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from ._exceptions import InvalidInputError

ENV_TOKEN = "DOWNLOADER_SERVE_TOKEN"
ENV_TOKEN_FILE = "DOWNLOADER_SERVE_TOKEN_FILE"
#: A token file larger than this is not a token file.
_MAX_FILE = 4096


class BearerToken:
    """A secret that a request must present as ``Authorization: Bearer <secret>``.

    >>> token = BearerToken("s3cret")
    >>> token.admits("Bearer s3cret"), token.admits("Bearer wrong"), token.admits(None)
    (True, False, False)
    >>> token
    BearerToken(<hidden>)
    """

    def __init__(self, secret: str) -> None:
        """Wrap ``secret``, which must be printable ASCII without spaces (what an HTTP header can carry)."""
        if not secret or not all(33 <= ord(char) < 127 for char in secret):
            raise InvalidInputError("the download service's token must be printable ASCII without spaces")
        self._secret = secret.encode("ascii")

    def __repr__(self) -> str:
        """Never the secret."""
        return "BearerToken(<hidden>)"

    def admits(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value presents this token (constant time in the token's content)."""
        if not authorization:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        try:
            offered = credentials.strip().encode("ascii")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(offered, self._secret)

    def header(self) -> dict[str, str]:
        """The token as Notifications' event match ``auth`` (``{"type": "header", ...}``) sends it."""
        return {"type": "Bearer", "credentials": self._secret.decode("ascii")}


def token_from_environment(environ: Mapping[str, str] | None = None) -> BearerToken | None:
    """The token set by ``DOWNLOADER_SERVE_TOKEN`` or ``DOWNLOADER_SERVE_TOKEN_FILE``; None when neither is set.

    Raises :class:`InvalidInputError` when both are set, or the file cannot
    be read, is empty or too large.
    """
    environ = os.environ if environ is None else environ
    value, path = environ.get(ENV_TOKEN), environ.get(ENV_TOKEN_FILE)
    if value and path:
        raise InvalidInputError(f"set {ENV_TOKEN} or {ENV_TOKEN_FILE}, not both")
    if value:
        return BearerToken(value.strip())
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_FILE + 1)
    except OSError as err:
        raise InvalidInputError(f"cannot read {ENV_TOKEN_FILE}={path}: {err.strerror or err}") from None
    if len(raw) > _MAX_FILE:
        raise InvalidInputError(f"{ENV_TOKEN_FILE}={path} is larger than {_MAX_FILE} bytes: not a token file")
    lines = raw.decode("ascii", "replace").splitlines()
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise InvalidInputError(f"{ENV_TOKEN_FILE}={path} is empty; put the token on its first line")
    return BearerToken(secret)
