"""Secrets stay in their requests, and what a server says is made safe to show.

A :class:`Secrets` set holds every credential a :class:`~.transport.Transport`
knows: the password of a URL's ``user:password@`` part, of a ``(user,
password)`` tuple or of an auth object (``username``/``password``
attributes, as requests' basic, digest and proxy auth have), every header
the ``auth`` dict's ``headers`` give, and the credential headers actually
sent (``Authorization``, ``Proxy-Authorization``, ``Cookie`` and whatever an
auth object added), each with the forms a server or a library may echo it
in: as is, base64 (with ``user:`` for basic), URL-encoded, JSON- and
repr-escaped.  :meth:`Secrets.scrub` replaces them with ``***``;
:meth:`Secrets.quote` makes server text (a body, a header, a reason phrase,
an error's text) safe to put into a message or a log line: scrubbed,
shortened to its first and last lines, and with control characters escaped
(:func:`escape_controls`), so that nothing a server sends can move a
terminal's cursor, retitle its window or hide text.

Every set registers itself while it lives, so that :func:`scrub_known` (what
every :class:`~.exceptions.DownloaderError` applies to its own text, and the
command line to everything it prints) removes what any live transport of the
process knows.  Values shorter than :data:`MIN_SECRET` characters are not
searched for: a text cannot be scrubbed of ``"ab"`` and stay readable.  They
are still never written by the library itself.

:func:`redact` takes the ``user:password@`` part out of a URL; every URL the
library keeps is already without it (see :meth:`.transport.Transport.adopt`).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

#: What a secret is replaced with.
MASK = "***"
#: Shorter values are not searched for in text (see the module docstring).
MIN_SECRET = 4
#: The headers that carry credentials whatever their value.
CREDENTIAL_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie")

#: Control characters a terminal acts on: C0 but tab and newline, DEL, C1, lone surrogates (undecodable bytes
#: after ``surrogateescape``), and the bidirectional controls that reorder what is shown.
_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[{_CONTROLS}]")
_CONTROL_OR_LINE = re.compile(f"[{_CONTROLS}\t\n]")

#: Every live set, for :func:`scrub_known`.
_LIVE: weakref.WeakSet[Secrets] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def redact(url: str) -> str:
    """Return ``url`` without any ``user:password@`` part, for logs and messages.

    >>> redact("http://ann:pw@cart.example.org:8081/cart/1")
    'http://cart.example.org:8081/cart/1'
    """
    return split_userinfo(url)[0]


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """Return ``url`` without its ``user:password@`` part, and the (decoded) user and password it held.

    >>> split_userinfo("http://ann:p%40ss@host/cart")
    ('http://host/cart', ('ann', 'p@ss'))
    """
    if "@" not in url:
        return url, None
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, (unquote(user), unquote(password))


def escape_controls(text: str, *, one_line: bool = False) -> str:
    r"""Escape what a terminal would act on (see the module docstring); ``one_line`` escapes tab and newline too.

    >>> escape_controls("ok\x1b]0;owned\x07 \x1b[2J\n")
    'ok\\x1b]0;owned\\x07 \\x1b[2J\n'
    """
    pattern = _CONTROL_OR_LINE if one_line else _CONTROL
    return pattern.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def summarize(message: str, limit: int = 240) -> str:
    """Keep a server message readable: its first and last meaningful lines, each at most ``limit`` characters.

    Cartd puts whole tracebacks, JSON-escaped, into ``X-Pacifica-Message``.
    """
    text = message.replace("\\\\n", "\n").replace("\\n", "\n").replace('\\"', '"')
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    clip = [line if len(line) <= limit else line[: limit - 3] + "..." for line in lines]
    if len(clip) == 1:
        return clip[0]
    return f"{clip[0]} ... {clip[-1]}"


def scrub_known(text: str) -> str:
    """``text`` with every secret any live :class:`Secrets` of the process holds replaced by :data:`MASK`."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for secrets in live:
        text = secrets.scrub(text)
    return text


def quote_known(text: Any, limit: int = 240) -> str:
    """``text`` made safe to quote in one line as :meth:`Secrets.quote` does, with every live set's secrets."""
    shown = summarize(scrub_known(str(text)), limit)
    return escape_controls(scrub_known(shown), one_line=True)


class Secrets:
    """The credentials one transport knows, in every form they may be echoed in; thread-safe.

    >>> secrets = Secrets()
    >>> secrets.add_auth(("ann", "s3cret-pw"))
    >>> secrets.scrub("denied: ann:s3cret-pw / Basic YW5uOnMzY3JldC1wdw==")
    'denied: ann:*** / Basic ***'
    """

    def __init__(self) -> None:
        """An empty set, registered for :func:`scrub_known` while it lives."""
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        with _LIVE_LOCK:
            _LIVE.add(self)

    def __len__(self) -> int:
        """How many forms are searched for."""
        with self._lock:
            return len(self._forms)

    def __repr__(self) -> str:
        """Never the values."""
        return f"<Secrets: {len(self)} forms>"

    # -- learning ------------------------------------------------------------------------

    def add(self, value: str, user: str | None = None) -> None:
        """Hold ``value`` (a password, a token, a header's value) and its forms; with ``user``, as basic auth."""
        if not isinstance(value, str) or len(value) < MIN_SECRET and user is None:
            return
        forms = set()
        if len(value) >= MIN_SECRET:
            forms |= {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1], repr(value)[1:-1]}
            forms.add(_b64(value))
        if user is not None:
            pair = f"{user}:{value}"
            forms |= {_b64(pair), base64.urlsafe_b64encode(pair.encode("utf-8")).decode("ascii").rstrip("=")}
        forms = {form for form in forms if len(form) >= MIN_SECRET}
        with self._lock:
            if forms <= self._forms:
                return
            self._forms |= forms
            self._pattern = None

    def add_auth(self, auth: Any) -> None:
        """Hold the password of ``auth``: a ``(user, password)`` tuple or an object with ``username``/``password``."""
        if isinstance(auth, tuple) and len(auth) == 2:
            user, password = auth
        else:
            user, password = getattr(auth, "username", None), getattr(auth, "password", None)
        if isinstance(user, bytes):
            user = user.decode("latin-1")
        if isinstance(password, bytes):
            password = password.decode("latin-1")
        if isinstance(password, str) and password:
            self.add(password, user if isinstance(user, str) else None)

    def add_url(self, url: Any) -> None:
        """Hold the password of ``url``'s ``user:password@`` part, if it has one."""
        if isinstance(url, str):
            credentials = split_userinfo(url)[1]
            if credentials is not None:
                self.add_auth(credentials)

    def add_header(self, name: str, value: Any) -> None:
        """Hold a credential header's value, the token after its scheme, and for basic auth the password."""
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not isinstance(value, str) or not value:
            return
        self.add(value)
        if name.lower() == "cookie":
            for cookie in value.split(";"):
                self.add(cookie.strip().partition("=")[2])
            return
        scheme, _, token = value.strip().partition(" ")
        if token:
            self.add(token.strip())
            if scheme.lower() == "basic":
                try:
                    user, _, password = base64.b64decode(token, validate=True).decode("latin-1").partition(":")
                except ValueError:
                    return
                self.add_auth((user, password))

    def add_headers(self, headers: Mapping[str, Any] | None, names: Iterable[str] = ()) -> None:
        """Hold the credential headers among ``headers`` (those of :data:`CREDENTIAL_HEADERS` and ``names``)."""
        if not headers:
            return
        for name in (*CREDENTIAL_HEADERS, *names):
            value = headers.get(name)
            if value:
                self.add_header(name, value)

    # -- using -----------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """``text`` with every held form replaced by :data:`MASK`."""
        pattern = self._compiled()
        return text if pattern is None else pattern.sub(MASK, text)

    def quote(self, text: Any, limit: int = 240) -> str:
        """``text`` (server text, an error) made safe to quote in one line: scrubbed, shortened, escaped."""
        shown = summarize(self.scrub(str(text)), limit)
        return escape_controls(self.scrub(shown), one_line=True)

    def cut_tail(self, data: bytes) -> bytes:
        """``data``, a body cut short, without a trailing start of a held form (the rest of it was cut off)."""
        with self._lock:
            forms = [form.encode("utf-8") for form in self._forms]
        end = len(data)
        for form in forms:
            for size in range(min(len(form) - 1, len(data)), 0, -1):
                if data.endswith(form[:size]):
                    end = min(end, len(data) - size)
                    break
        return data[:end]

    def _compiled(self) -> re.Pattern[str] | None:
        with self._lock:
            if self._pattern is None and self._forms:
                alternatives = sorted(self._forms, key=len, reverse=True)  # the longest form first
                self._pattern = re.compile("|".join(map(re.escape, alternatives)))
            return self._pattern


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")
