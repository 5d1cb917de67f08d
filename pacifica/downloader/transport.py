"""HTTP with timeouts, credentials and the retry policy applied to every request.

:class:`Transport` owns the ``requests`` session every request of a
downloader goes through, the tar download included, so that authentication,
TLS settings, timeouts and retries are the same everywhere.  It retries
connection errors and the policy's statuses with backoff, logs each retry
without credentials, and raises :class:`TransferError` listing every failed
attempt when it gives up.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import requests

from .config import Timeouts
from .exceptions import CartTimeoutError, InvalidInputError, TransferError
from .retry import Retry, RetryBudget
from .watchdog import Watch, watch_session

__all__ = ["Transport", "redact", "request_kwargs"]

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


def redact(url: str) -> str:
    """Return ``url`` without any ``user:password@`` part, for logs and messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, parts.fragment))


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
        self.session = session if session is not None else requests.Session()
        self.kwargs = request_kwargs(auth)
        self.timeouts = timeouts
        self.retry = retry

    @property
    def session(self) -> requests.Session:
        """The requests session every request goes through (its default adapters are watched)."""
        return self._session

    @session.setter
    def session(self, session: requests.Session) -> None:
        self._session = watch_session(session)

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
        merged = dict(self.kwargs)
        if headers:
            merged["headers"] = dict(merged.get("headers") or {}, **headers)
        merged.update(kwargs)
        while True:
            retry_after: str | None = None
            quiet = budget.quiet_deadline
            merged["timeout"] = kwargs.get("timeout") or self._timeout(deadline, quiet, budget, method, url)
            LOGGER.debug("%s %s (try %d)", method, redact(url), budget.retry.spent + 1)
            cut_at = min((limit for limit in (deadline, quiet) if limit is not None), default=None)
            watch = Watch(cut_at)
            try:
                with watch:
                    response = self.session.request(method, url, stream=stream, **merged)
            except RETRYABLE_ERRORS as err:
                reason = CUT_OFF if watch.fired else f"{type(err).__name__}: {err}"
            else:
                if watch.fired:  # what came before the cut may parse as an answer; it is not one
                    response.close()
                    reason = CUT_OFF
                elif response.status_code not in self.retry.statuses or is_final(response):
                    if answer_is_progress:
                        budget.progressed()
                    return response
                else:
                    retry_after = response.headers.get("Retry-After")
                    reason = f"HTTP {response.status_code} {response.reason}"
                    response.close()
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
                method, redact(url), reason, delay, budget.retry.spent + 1,
            )
            time.sleep(delay)
