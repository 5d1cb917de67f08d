"""The Cartd protocol: create a cart, ask how it is doing, fetch it, delete it.

:class:`BaseCartAPI` speaks to one Cartd endpoint through a :class:`Transport`,
so every request has timeouts, credentials and the retry policy.  It polls
with ``HEAD`` only: Cartd answers ``GET`` with 202 forever for a failed cart,
while ``HEAD`` reports ``ready``, ``staging`` or ``error`` with the reason.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import OrderedDict
from typing import Any

import requests

from ._config import Timeouts, resolve_cart_url
from ._exceptions import CartError, CartFailedError, CartNotFoundError, InvalidInputError
from ._records import FileRecord
from ._redaction import escape_controls, quote_known, redact, scrub_known, split_userinfo
from ._retry import Retry, RetryBudget
from ._transport import Transport

LOGGER = logging.getLogger(__name__)

#: How many created carts' file lists a CartAPI keeps for :meth:`CartAPI.posted_records` (a cart's list
#: is dropped when it is deleted; this bounds a caller that creates carts and never fetches them).
REMEMBERED_CARTS = 1024


def staging_failed(response: requests.Response) -> bool:
    """True for Cartd's answer that staging failed (HTTP 500 with ``X-Pacifica-Status: error``): not retried."""
    return response.headers.get("X-Pacifica-Status") == "error"


class BaseCartAPI:
    """Creates carts on a Cartd endpoint, asks how they are doing, fetches and deletes them.

    The core of the public :class:`~pacifica.downloader.CartAPI`, which adds the
    released methods (``setup_cart``, ``wait_for_cart``) in :mod:`._compat`; every
    method here has one signature, and the library calls only these.
    """

    def __init__(
        self,
        cart_api_url: str | None = None,
        *,
        proto: str | None = None,
        addr: str | None = None,
        port: int | str | None = None,
        auth: Any = None,
        session: requests.Session | None = None,
        extra_args: dict[str, Any] | None = None,
        timeouts: Timeouts = Timeouts(),
        retry: Retry = Retry(),
        transport: Transport | None = None,
    ) -> None:
        """Talk to ``cart_api_url``, or to ``proto://addr:port`` (defaults from the environment).

        The URL is resolved as 0.4.1 did (see :func:`resolve_cart_url`):
        ``cart_api_url``, else ``CARTD_CART_API_URL``, else the parts, each
        from its argument, else ``CARTD_PROTO``/``CARTD_ADDR``/``CARTD_PORT``,
        else ``http://127.0.0.1:8081``.  ``auth`` is a requests auth object,
        a ``(user, password)`` tuple or a dict of requests arguments
        (``auth``, ``cert``, ``verify``, ``headers``, ``proxies``);
        ``session`` a ``requests.Session`` to reuse; ``extra_args`` more
        members of the cart's POST body, such as ``{"bundle": True}``.
        """
        url = resolve_cart_url(cart_api_url, proto=proto, addr=addr, port=port)
        problems = [
            f"{name} must be a {kind.__name__}, not {type(value).__name__}"
            for name, value, kind in (("timeouts", timeouts, Timeouts), ("retry", retry, Retry))
            if not isinstance(value, kind)
        ]
        if problems:
            raise InvalidInputError("the cart API cannot be built", problems)
        if session is not None and not callable(getattr(session, "request", None)):
            raise InvalidInputError(f"session must be a requests.Session, not {type(session).__name__}")
        if extra_args is not None and not isinstance(extra_args, dict):
            raise InvalidInputError(f"extra_args must be a dict, not {type(extra_args).__name__}")
        self.transport = transport or Transport(session=session, auth=auth, timeouts=timeouts, retry=retry)
        # Kept without its user:password@ part: every cart URL is made from it, and those are logged, written
        # down, reported and put into errors. The transport sends those credentials (when no auth is given).
        self.cart_api_url = self._clean(url)
        self.extra_args = dict(extra_args or {})
        if "fileids" in self.extra_args:
            raise InvalidInputError("extra_args must not set 'fileids'; the files come from the event")
        try:
            json.dumps(self.extra_args)
        except (TypeError, ValueError) as err:
            raise InvalidInputError(f"extra_args must be JSON-serialisable: {err}") from None
        # What each cart this object created was asked to hold, so that a cart fetched later by URL
        # alone (the released ``_download_from_url``) is still verified file by file.
        self._posted: OrderedDict[str, list[FileRecord]] = OrderedDict()
        self._posted_lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        """The ``requests`` session every request goes through (0.4.1 callers may replace it)."""
        return self.transport.session

    @session.setter
    def session(self, session: requests.Session) -> None:
        if not callable(getattr(session, "request", None)):
            raise InvalidInputError(f"session must be a requests.Session, not {type(session).__name__}")
        self.transport.session = session

    @property
    def auth(self) -> dict[str, Any]:
        """The requests keyword arguments carrying credentials and TLS settings (0.4.1's ``auth`` dict)."""
        return self.transport.kwargs

    def _clean(self, url: str) -> str:
        """``url`` without its ``user:password@`` part, whose credentials the transport takes (see
        :meth:`Transport.adopt`): no URL this object keeps, logs or puts in an error carries them."""
        return url if split_userinfo(url)[1] is None else self.transport.adopt(url)

    def posted_records(self, cart_url: str) -> list[FileRecord] | None:
        """The files this object asked ``cart_url`` to hold, or None for a cart it did not create."""
        with self._posted_lock:
            records = self._posted.get(redact(cart_url))
        return None if records is None else list(records)

    def _remember(self, cart_url: str, records: list[FileRecord]) -> None:
        with self._posted_lock:
            self._posted[cart_url] = records
            while len(self._posted) > REMEMBERED_CARTS:
                self._posted.popitem(last=False)

    def _forget(self, cart_url: str) -> None:
        with self._posted_lock:
            self._posted.pop(cart_url, None)

    def new_cart_url(self) -> str:
        """A URL for a new cart: the cart's id is chosen by the client, so it can be recorded before the POST."""
        return f"{self.cart_api_url}/{uuid.uuid4().hex}"

    def post_cart(self, cart_url: str, records: list[FileRecord], *, budget: RetryBudget | None = None) -> None:
        """POST ``records`` (already validated) as the cart at ``cart_url``.

        Posting an existing cart's URL again makes Cartd add a new cart under
        the same id, with new tasks, and answer for the newest from then on;
        the old one's tasks are not revoked, and a DELETE removes both.
        """
        cart_url = self._clean(cart_url)
        body = dict(self.extra_args, fileids=[record.cart_entry() for record in records])
        response = self.transport.request(
            "POST", cart_url, data=json.dumps(body), headers={"Content-Type": "application/json"}, budget=budget
        )
        if response.status_code != 201:
            raise CartError(
                f"Cartd refused to create the cart (HTTP {response.status_code}): {quote_known(response.text)}",
                cart_url=cart_url,
                response=response,
            )
        self._remember(cart_url, records)
        LOGGER.info("cart %s created with %d files", redact(cart_url), len(records))

    def probe(self, cart_url: str, deadline: float | None = None, budget: RetryBudget | None = None) -> str:
        """Ask once how the cart is doing (one ``HEAD``); return its status, ``"ready"`` or ``"staging"``.

        Raises :class:`CartFailedError` with the server's reason when staging
        failed, :class:`CartNotFoundError` when the cart does not exist, and
        :class:`CartError` for any other refusal.
        """
        cart_url = self._clean(cart_url)
        response = self.transport.request("HEAD", cart_url, deadline=deadline, is_final=staging_failed, budget=budget)
        status = response.headers.get("X-Pacifica-Status", "") or f"HTTP {response.status_code}"
        message = response.headers.get("X-Pacifica-Message", "")
        if response.status_code == 204 and status == "ready":
            return "ready"
        if response.status_code == 404:
            raise CartNotFoundError(
                f"the cart {redact(cart_url)} does not exist on the server (deleted, or never created)",
                cart_url=cart_url,
                response=response,
            )
        if 400 <= response.status_code < 500:
            raise CartError(
                f"Cartd refused to report on the cart {redact(cart_url)} (HTTP {response.status_code} "
                f"{quote_known(response.reason)}); check the credentials and the cart URL",
                cart_url=cart_url,
                response=response,
            )
        if status == "error":
            raise CartFailedError(
                f"Cartd could not stage the cart: {quote_known(message)}. "
                "Check that every file id exists in the archive and that its hash is right",
                server_message=escape_controls(scrub_known(message)),
                cart_url=cart_url,
                response=response,
            )
        if LOGGER.isEnabledFor(logging.DEBUG):
            LOGGER.debug(
                "cart %s: HTTP %s status %s", redact(cart_url), response.status_code, quote_known(repr(status))
            )
        return status

    def open_cart(
        self,
        cart_url: str,
        filename: str,
        offset: int = 0,
        deadline: float | None = None,
        budget: RetryBudget | None = None,
    ) -> requests.Response:
        """Start streaming the ready cart's tar; return the open response.

        With ``offset`` the request asks for the bytes from there on (the
        caller checks the answer is a matching 206).
        """
        headers = {"Range": f"bytes={offset}-"} if offset else None
        cart_url = self._clean(cart_url)
        response = self.transport.request(
            "GET",
            cart_url,
            params={"filename": filename},
            stream=True,
            headers=headers,
            deadline=deadline,
            budget=budget,
            answer_is_progress=False,  # only the stream's new bytes are progress
        )
        if response.status_code in (200, 206):
            return response
        text = quote_known(response.text)  # read up to a cap by the transport
        response.close()
        if response.status_code == 404:
            raise CartNotFoundError(
                f"the cart {redact(cart_url)} is gone from the server", cart_url=cart_url, response=response
            )
        raise CartError(
            f"Cartd did not send the cart (HTTP {response.status_code}): {text}", cart_url=cart_url, response=response
        )

    def cart_exists(self, cart_url: str, budget: RetryBudget | None = None) -> bool:
        """True unless the server answers 404 for the cart (one HEAD, no waiting)."""
        response = self.transport.request("HEAD", self._clean(cart_url), is_final=staging_failed, budget=budget)
        return response.status_code != 404

    def delete_cart(self, cart_url: str, budget: RetryBudget | None = None) -> bool:
        """Delete the cart on the server; return False if it was already gone."""
        cart_url = self._clean(cart_url)
        response = self.transport.request("DELETE", cart_url, budget=budget)
        if response.status_code == 404:
            self._forget(cart_url)
            return False
        if response.status_code != 200:
            raise CartError(
                f"Cartd did not delete the cart (HTTP {response.status_code})", cart_url=cart_url, response=response
            )
        self._forget(cart_url)
        LOGGER.info("cart %s deleted", redact(cart_url))
        return True
