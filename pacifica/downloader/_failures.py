"""Which failures of a request trying again cannot mend, and what to tell the user about them.

A connection that is refused, reset or silent is worth another try; a
server whose TLS certificate cannot be verified, or whose answer breaks the
limits ``http.client`` puts on a status or header line (64 KiB) or on the
number of headers (100), gives the same answer every time.  Those end the
request at once, with one try spent, in a :class:`~.exceptions.TransferError`
whose message says what to do (:func:`lasting_failure`).
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator

import requests

#: How to make the library trust a private certificate authority, in every way it can be given.
CA_REMEDY = (
    "if the server's certificate is signed by a private certificate authority, give that CA's certificate "
    "(PEM): auth={'verify': '/path/to/ca.pem'} in Python, the REQUESTS_CA_BUNDLE environment variable, "
    "or --ca-bundle PATH on the command line"
)
#: TLS failures that are a connection dropped during the handshake, which another try may well pass.
_TRANSIENT_TLS = (
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    TimeoutError,
)


def causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and every exception it wraps: its exception arguments (as urllib3 and requests wrap), its cause
    and its context, each once."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [arg for arg in current.args if isinstance(arg, BaseException)]
        todo += [link for link in (current.__cause__, current.__context__) if link is not None]


def lasting_failure(err: BaseException) -> str | None:
    """Why ``err``, raised by a request, will happen again on every try (a sentence for the message), or None."""
    chain = list(causes(err))
    if isinstance(err, requests.exceptions.SSLError) and not any(isinstance(e, _TRANSIENT_TLS) for e in chain):
        if any(isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(e) for e in chain):
            return f"the server's TLS certificate could not be verified; {CA_REMEDY}"
        return "the TLS handshake failed; check that the URL's scheme and port are those of an https server"
    for cause in chain:
        if isinstance(cause, http.client.LineTooLong) or (
            isinstance(cause, http.client.HTTPException) and str(cause).startswith("got more than")
        ):
            return (
                "the server's answer breaks the limits on the size or number of its status and header "
                "lines; this is not a Cartd answer (check the URL: another service or a proxy may be answering)"
            )
    return None
