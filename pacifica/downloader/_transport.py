"""HTTP with timeouts, credentials and the retry policy applied to every request.

:class:`Transport` owns the ``requests`` session every request of a
downloader goes through, the tar download included, so that authentication,
TLS settings, timeouts and retries are the same everywhere.  It retries
connection errors and the policy's statuses with backoff, logs each retry
without credentials, and raises :class:`TransferError` listing every failed
attempt when it gives up; a failure no retry can mend (an unverifiable TLS
certificate, an answer beyond ``http.client``'s limits) ends the request at
once (:mod:`.failures`).

It also owns the request's secrets (:class:`~.redaction.Secrets`): every
credential it is given or sends, which it scrubs from whatever server text it
quotes.  A URL's ``user:password@`` part is taken out of it (:meth:`Transport.adopt`)
and used as the credentials of requests to that URL's server when no other
``auth`` is given, as requests does.  Every request is streamed, and the body
of an answer that is not a stream is read up to a cap (:mod:`.bodies`).
"""

from __future__ import annotations

import io
import logging
import time
import urllib.request
from typing import Any, Callable
from urllib.parse import urlsplit

import requests

from ._bodies import hold_body
from ._config import Timeouts
from ._exceptions import CartTimeoutError, InvalidInputError, TransferError
from ._failures import lasting_failure
from ._redaction import Secrets, redact, split_userinfo
from ._retry import Retry, RetryBudget
from ._watchdog import Watch, watch_session

LOGGER = logging.getLogger(__name__)

#: The requests keyword arguments an ``auth`` dict may carry.
AUTH_KEYS = frozenset({"auth", "cert", "verify", "headers", "proxies"})
#: Why a try failed when the watchdog cut it off.
CUT_OFF = "no complete answer by the deadline or within Timeouts.progress of the last progress; cut off"
#: Errors after which a request is worth sending again.
RETRYABLE_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


def request_kwargs(auth: Any) -> dict[str, Any]:
    """Turn the ``auth`` argument into requests keyword arguments.

    ``auth`` may be ``None``, a requests auth object or ``(user, password)``
    tuple, or a dict of requests keyword arguments (``auth``, ``cert``,
    ``verify``, ``headers``, ``proxies``) as the released versions took.
    """
    if auth is None:
        return {}
    if isinstance(auth, dict):
        unknown = sorted(set(map(str, auth)) - AUTH_KEYS)
        if unknown:
            raise InvalidInputError(
                "the auth dict may only hold {}".format(", ".join(sorted(AUTH_KEYS))),
                [f"unknown key {key!r}" for key in unknown],
            )
        return dict(auth)
    if isinstance(auth, (tuple, requests.auth.AuthBase)) or callable(auth):
        return {"auth": auth}
    raise InvalidInputError(
        "auth must be None, a (user, password) tuple, a requests auth object or a dict of requests arguments"
    )


def _origin(url: str) -> tuple[str, str, int | None]:
    """The scheme, host and port of ``url`` (a URL's credentials are sent to its server only)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme.lower(), (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(parts.scheme)


#: Headers requests adds to a request by itself, besides the credentials it adds.
_REQUESTS_OWN = frozenset({"content-length", "content-type", "transfer-encoding"})


class Transport:
    """Sends requests through one session with timeouts and the retry policy."""

    def __init__(
        self,
        session: requests.Session | None = None,
        auth: Any = None,
        timeouts: Timeouts = Timeouts(),
        retry: Retry = Retry(),
    ) -> None:
        """Use ``session`` (or a new one) with the ``auth`` settings, ``timeouts`` and ``retry``."""
        self.secrets = Secrets()
        self.kwargs: dict[str, Any] = {}
        self.session = session if session is not None else requests.Session()
        self.kwargs = request_kwargs(auth)
        self.timeouts = timeouts
        self.retry = retry
        #: Credentials taken out of URLs, by the server (scheme, host, port) they are sent to.
        self._url_auth: dict[tuple[str, str, int | None], tuple[str, str]] = {}
        self._learn_settings(self.kwargs, environment=True)

    def adopt(self, url: str) -> str:
        """Return ``url`` without its ``user:password@`` part; those credentials become this transport's for
        requests to that server unless an ``auth`` is given (as requests uses a URL's), and secrets."""
        clean, credentials = split_userinfo(url)
        if credentials is not None:
            self.secrets.add_auth(credentials)
            self._url_auth.setdefault(_origin(clean), credentials)
        return clean

    def _learn_settings(self, kwargs: dict[str, Any], environment: bool = False) -> None:
        """Hold the secrets of request settings: auth, headers given as credentials, proxies' URLs (with
        ``environment``, those of the environment's proxies too)."""
        self.secrets.add_auth(kwargs.get("auth"))
        for name, value in (kwargs.get("headers") or {}).items():
            self.secrets.add_header(str(name), value)
        proxies = dict(kwargs.get("proxies") or {})
        if environment and self.session.trust_env:
            proxies.update(urllib.request.getproxies())
        for proxy in proxies.values():
            self.secrets.add_url(proxy)

    def _url_credentials(self, url: str, merged: dict[str, Any]) -> None:
        """Send the credentials taken out of the URL of ``url``'s server when no other auth is given."""
        if not merged.get("auth") and self.session.auth is None:
            credentials = self._url_auth.get(_origin(url))
            if credentials is not None:
                merged["auth"] = credentials

    def _sent(self, sent: Any, given: Any = ()) -> None:
        """Hold the credential headers of what was sent: a response (with its redirects) or a failed request.

        Those are ``Authorization``, ``Proxy-Authorization``, ``Cookie``, the
        auth dict's headers, and any header an auth object added: one neither
        the session, nor the request (``given``), nor requests itself set.
        """
        known = {str(name).lower() for name in (*self.session.headers, *given)} | _REQUESTS_OWN
        for response in [*getattr(sent, "history", ()), sent]:
            request = response if isinstance(response, requests.PreparedRequest) else getattr(response, "request", None)
            headers = getattr(request, "headers", None)
            if headers:
                added = [name for name in headers if name.lower() not in known]
                self.secrets.add_headers(headers, [*(self.kwargs.get("headers") or {}), *added])

    def hold(self, response: requests.Response) -> requests.Response:
        """Read ``response``'s body up to :data:`~.bodies.BODY_LIMIT` into it (``.text``, ``.json()``); once."""
        if not isinstance(response.raw, io.BytesIO):
            hold_body(response, cut=self.secrets.cut_tail)
        return response

    def quote(self, text: Any) -> str:
        """Server text made safe for a message or a log line (:meth:`~.redaction.Secrets.quote`)."""
        return self.secrets.quote(text)

    def _failed(
        self, method: str, url: str, err: requests.RequestException, cut: bool, budget: RetryBudget, given: list[str]
    ) -> tuple[str, TransferError | None]:
        """Why a try that raised ``err`` failed, and the error to raise when no other try can mend it.

        The request's own error is never raised nor chained: it holds the request, headers and all.
        """
        self._sent(err.request, given)
        if cut:
            return CUT_OFF, None
        if not isinstance(err, RETRYABLE_ERRORS):  # an invalid URL, header or redirect: the same every time
            return "", TransferError(f"{method} {redact(url)} could not be sent: {self.why(err)}", cart_url=url)
        lasting = lasting_failure(err)
        if lasting is not None:
            return "", TransferError(
                f"{method} {redact(url)} failed: {lasting}", attempts=[*budget.history, self.why(err)], cart_url=url
            )
        return self.why(err), None

    def why(self, err: BaseException) -> str:
        """Why a try failed, for the retry log and the error's list of attempts (server text quoted safely)."""
        return f"{type(err).__name__}: {self.quote(err)}"

    @property
    def session(self) -> requests.Session:
        """The requests session every request goes through (its default adapters are watched)."""
        return self._session

    @session.setter
    def session(self, session: requests.Session) -> None:
        self._session = watch_session(session)
        self.secrets.add_auth(session.auth)
        self.secrets.add_headers(session.headers)
        self._learn_settings(self.kwargs, environment=True)

    def _timeout(
        self, deadline: float | None, quiet: float | None, budget: RetryBudget, method: str, url: str
    ) -> tuple[float, float]:
        """Connect and read timeouts, shortened so that no socket wait outlasts ``deadline`` or ``quiet`` (the
        moment the patience runs out)."""
        now = time.monotonic()
        if deadline is not None and deadline - now <= 0:
            raise CartTimeoutError(
                f"{method} {redact(url)} not sent: the deadline has passed"
                + ("; earlier tries: " + "; ".join(budget.history) if budget.history else ""),
                cart_url=url,
            )
        if quiet is not None and quiet - now <= 0:
            raise self._gave_up(method, url, budget)
        left = min(limit - now for limit in (deadline, quiet, now + self.timeouts.read) if limit is not None)
        return min(self.timeouts.connect, left), left

    def new_budget(self) -> RetryBudget:
        """A fresh retry budget for one download: this transport's ``retry``, ``Timeouts.progress`` of patience."""
        return RetryBudget(self.retry, self.timeouts.progress)

    @staticmethod
    def _gave_up(method: str, url: str, budget: RetryBudget) -> TransferError:
        return TransferError(
            f"{method} {redact(url)} failed ({budget.why_spent()}); check that the cart service is up and reachable",
            attempts=budget.history,
            cart_url=url,
        )

    def request(
        self,
        method: str,
        url: str,
        *,
        stream: bool = False,
        headers: dict[str, str] | None = None,
        deadline: float | None = None,
        is_final: Callable[[requests.Response], bool] = lambda response: False,
        budget: RetryBudget | None = None,
        answer_is_progress: bool = True,
        **kwargs: Any,
    ) -> requests.Response:
        """Send a request, retrying transient failures; return the first answer worth keeping.

        An answer whose status is in the retry policy is retried unless
        ``is_final(response)`` says it is the server's real answer (Cartd's
        HEAD answers 500 for a failed cart).  ``deadline`` is a
        :func:`time.monotonic` value no retry may sleep past.  ``budget`` is
        the download's :class:`RetryBudget` (default: a new one, this request
        alone); a kept answer gives its tries back unless
        ``answer_is_progress`` is false (a stream's answer: only new bytes are
        progress).  Raises :class:`TransferError` listing every failed try
        when the budget is spent.
        """
        budget = budget if budget is not None else self.new_budget()
        url, merged, given = self._prepare(url, headers, kwargs)
        while True:
            response, reason = self._try(method, url, merged, stream, deadline, budget, given)
            retry_after: str | None = None
            if response is not None:
                if response.status_code not in self.retry.statuses or is_final(response):
                    if answer_is_progress:
                        budget.progressed()
                    return response
                retry_after = response.headers.get("Retry-After")
                reason = f"HTTP {response.status_code} {self.quote(response.reason)}"
                response.close()
            self._pause(method, url, reason, retry_after, deadline, budget)

    def _prepare(
        self, url: str, headers: dict[str, str] | None, kwargs: dict[str, Any]
    ) -> tuple[str, dict[str, Any], list[str]]:
        """The URL without its credentials, requests' keyword arguments for every try, and the headers' names."""
        url = self.adopt(url)
        merged = dict(self.kwargs)
        if headers:
            merged["headers"] = dict(merged.get("headers") or {}, **headers)
        merged.update(kwargs)
        merged["timeout"] = kwargs.get("timeout")  # None: each try gets its own (see _try)
        self._learn_settings(self.kwargs)  # the auth dict's headers are credentials; the request's own are not
        self._learn_settings(kwargs)
        self._url_credentials(url, merged)
        return url, merged, list(merged.get("headers") or {})

    def _try(
        self,
        method: str,
        url: str,
        merged: dict[str, Any],
        stream: bool,
        deadline: float | None,
        budget: RetryBudget,
        given: list[str],
    ) -> tuple[requests.Response | None, str]:
        """Send one try, cut off at the deadline or when the patience runs out: the answer, or why there is none.

        An answer that is not the stream asked for is read here, capped, while the watch still covers it.
        """
        quiet = budget.quiet_deadline
        options = dict(merged, timeout=merged["timeout"] or self._timeout(deadline, quiet, budget, method, url))
        LOGGER.debug("%s %s (try %d)", method, redact(url), budget.spent + 1)
        watch = Watch(min((limit for limit in (deadline, quiet) if limit is not None), default=None))
        failed: TransferError | None = None
        try:
            with watch:
                # Always streamed: requests would read any body whole.
                response = self.session.request(method, url, stream=True, **options)
                self._sent(response, given)
                if not (stream and response.status_code in (200, 206)):
                    self.hold(response)
        except requests.RequestException as err:
            reason, failed = self._failed(method, url, err, watch.fired, budget, given)
        else:
            if not watch.fired:
                return response, ""
            response.close()  # what came before the cut may parse as an answer; it is not one
            reason = CUT_OFF
        if failed is not None:
            raise failed  # here, not in the except clause: no context holding the request, headers and all
        return None, reason

    def _pause(
        self, method: str, url: str, reason: str, retry_after: str | None, deadline: float | None, budget: RetryBudget
    ) -> None:
        """Spend a try on ``reason`` and wait before the next; raise when none may follow."""
        delay = budget.spend(reason, retry_after)
        if delay is None:
            raise self._gave_up(method, url, budget)
        if deadline is not None and time.monotonic() + delay > deadline:
            raise CartTimeoutError(
                f"{method} {redact(url)} did not succeed before the deadline: "
                + "; ".join([*budget.history, "deadline reached before the next try"]),
                cart_url=url,
            )
        LOGGER.warning(
            "%s %s failed (%s); trying again in %.1f s (try %d since the server's last answer)",
            method,
            redact(url),
            reason,
            delay,
            budget.spent + 1,
        )
        time.sleep(delay)
