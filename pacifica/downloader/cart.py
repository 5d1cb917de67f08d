"""One cart, from its POST to its DELETE: an object that owns its life on the server.

A :class:`Cart` is created (``POST``), waits while Cartd stages it (``HEAD``
polls on a :class:`PollSchedule`), is received (the tar streamed through a
:class:`CartReceiver`, resumed or started over on the download's one
:class:`RetryBudget`) and is deleted, with the recheck that a cart Cartd
resurrects needs.  Its :attr:`Cart.state` says where it is.  It knows
nothing of the other carts of its download: whoever drives it (the
:mod:`.pipeline`, asking its :mod:`.scheduler`) decides when each step may run.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .cartapi import CartAPI
from .exceptions import CartError, CartTimeoutError, DownloaderError, TransferError
from .extract import CartReceiver
from .incoming import IncomingArea
from .ledger import CartLedger
from .polling import CartLost, PollSchedule, poll_until_ready
from .progress import Tracker
from .records import FileRecord, entries_callable
from .retry import RetryBudget
from .stream import CartStream, StreamBroken
from .transport import redact
from .verified import VerifiedIndex

__all__ = ["Cancelled", "Cart", "Delivery"]

LOGGER = logging.getLogger(__name__)

#: Pauses (seconds) between the checks that a cart deleted while staging stayed deleted.
RECHECK_DELETED = (0.1, 0.3, 0.6, 1.0, 2.0)


class Cancelled(Exception):
    """Internal: another cart of the same download failed, or the caller interrupted it."""


@dataclass
class Delivery:
    """Where and how the carts of one download deliver their files; shared by them all.

    ``timeout``: seconds a cart may stage; ``deadline``: the monotonic time
    the whole call must end by; ``cancelled``: set when the download is
    abandoned, which every cart checks between its steps and its chunks;
    ``ledger``: where the carts are written down before their POST (None:
    nowhere).
    """

    destination: Path
    filename: str
    incoming: IncomingArea
    tracker: Tracker
    index: VerifiedIndex
    budget: RetryBudget
    timeout: float | None = None
    deadline: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    ledger: CartLedger | None = None

    def check(self) -> None:
        """Raise :class:`Cancelled` once the download is being abandoned."""
        if self.cancelled.is_set():
            raise Cancelled("another cart of this download failed")

    def wait_limit(self, default: float) -> float:
        """Seconds a cart may stage: the call's ``timeout`` (else ``default``), cut short by its ``deadline``."""
        limit = default if self.timeout is None else self.timeout
        return limit if self.deadline is None else min(limit, self.deadline - time.monotonic())


class Cart:
    """One cart of a download: ``new`` -> ``created`` -> ``ready`` -> ``received`` -> ``deleted``.

    A cart that stages far longer than it should is ``lost`` (see
    ``Timeouts``), and ``created`` again once :meth:`repost` has posted it
    again; :attr:`reposts` counts those.  ``records`` are the files it holds
    (None for a cart created elsewhere, whose files are not known: they are
    received unverified).  ``keep`` leaves it on the server at the end.

    >>> cart = Cart(api, records, delivery)       # doctest: +SKIP
    >>> cart.create(); cart.wait(); cart.receive(); cart.delete()    # doctest: +SKIP
    """

    def __init__(
        self, api: CartAPI, records: list[FileRecord] | None, delivery: Delivery | None, *, keep: bool = False,
        url: str | None = None,
    ) -> None:
        """A cart of ``records``; with ``url``, one that already exists on the server (state ``created``).

        ``delivery`` may come later (it is needed from :meth:`create` on; :meth:`delete` does without).
        """
        self.api = api
        self.records = records
        self.delivery = delivery
        self.keep = keep
        self.url = url
        self.state = "new" if url is None else "created"
        self.reposts = 0
        self._waiting_since: float | None = None  # the first wait's start: re-posts do not extend the limit
        self._wait_ends = 0.0

    def create(self) -> str:
        """POST the cart; return its URL."""
        if self.records is None:
            raise ValueError("a cart of unknown files cannot be created")
        delivery = self._delivery()
        delivery.check()
        url = self.api.new_cart_url()
        ledger = None if self.keep else delivery.ledger
        if ledger is not None:
            ledger.add(url)  # before the POST: a run killed during it still leaves a record
        self.url = url
        try:
            # setup_cart, not post_cart: the released programs and the benchmarks hook it
            created = self.api.setup_cart(entries_callable(self.records), budget=delivery.budget, cart_url=url)
        except CartError:
            if ledger is not None:
                ledger.remove(url)  # Cartd answered and refused: no cart was made
            raise
        if created != url:  # a CartAPI that hands back another cart (the benchmarks' ready carts)
            self.url = created
            if ledger is not None:
                ledger.add(created)
                ledger.remove(url)
        # Any other failure leaves it unknown whether the cart was made: it stays in the ledger (the next run
        # deletes it if it exists), and state "new" means this run sends no DELETE for it.
        self.state = "created"
        delivery.tracker.cart_created(self.url)
        return self.url

    def wait(
        self, schedule: PollSchedule = PollSchedule(), relaxed: threading.Event | None = None,
        expected: float | None = None,
    ) -> None:
        """Poll until Cartd has staged the cart (see :mod:`.polling`); raise its typed error if staging fails.

        ``relaxed``, once set, says nothing waits for the moment it is ready
        (no near-polls).  ``expected``: seconds the download's earlier carts
        say this one should take (None: none was ready yet); from it and
        ``Timeouts`` comes the moment it is suspected lost, when
        :class:`CartLost` is raised for the driver to :meth:`repost` it, or,
        once ``Timeouts.reposts`` re-posts are spent, :class:`CartTimeoutError`.
        The wait limit (``timeout``, ``Timeouts.wait``) counts from the first
        wait, re-posts included.
        """
        url, delivery = self._url(), self._delivery()
        timeouts = self.api.transport.timeouts
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
            self._wait_ends = now + delivery.wait_limit(timeouts.wait)
        limit = self._wait_ends - now

        def polled(status: str) -> None:
            delivery.check()
            delivery.tracker("staging")

        try:
            poll_until_ready(
                lambda deadline: self.api.probe(url, deadline=deadline, budget=delivery.budget),
                schedule, max(limit, 0.0), url, on_poll=polled, relaxed=relaxed,
                lost_after=timeouts.lost_after(expected, self.reposts),
            )
        except CartLost as lost:
            waited = time.monotonic() - self._waiting_since
            if self.reposts >= timeouts.reposts:
                raise CartTimeoutError(
                    f"the cart {redact(url)} was still staging after {waited:.0f} s and {self.reposts} re-post(s): "
                    "Cartd seems to lose its tasks (look for errors in its Celery worker's log, such as "
                    "'database is locked' on SQLite), or stages far slower than before; raise Timeouts.lost "
                    "for a slow archive",
                    cart_url=url,
                ) from None
            self.state = "lost"
            LOGGER.warning("%s; posting it again (%d of %d)", lost, self.reposts + 1, timeouts.reposts)
            raise
        self.state = "ready"

    def repost(self) -> None:
        """POST a lost cart again under the same id (Cartd then answers for the new one; see :mod:`.cartapi`)."""
        url, delivery = self._url(), self._delivery()
        if self.records is None:
            raise ValueError("a cart of unknown files cannot be posted again")
        delivery.check()
        self.api.post_cart(url, self.records, budget=delivery.budget)
        self.reposts += 1
        self.state = "created"
        delivery.tracker.cart_reposted(url)

    def receive(self, done: set[str] | None = None) -> None:
        """Stream the ready cart into place; start over (skipping verified files) when it breaks.

        ``done`` holds the paths already in place, whose bytes are skipped.
        """
        url, delivery = self._url(), self._delivery()
        wanted = None if self.records is None else {record.path: record for record in self.records}
        tops = {delivery.filename.replace(".tar", ""), url.rsplit("/", 1)[-1]}
        verified: list[tuple[str, str, str, str]] = []  # recorded in the index once per try, not per file
        transferred = [0]

        def placed(record: FileRecord | None, path: str) -> None:
            if record is not None:  # a file of an unknown cart was not verified: never trust it later
                verified.append((f"{delivery.filename}/{record.path}", path, record.hashtype, record.hashsum))
            delivery.tracker.file_placed()

        def received(count: int) -> None:
            delivery.check()
            transferred[0] += count
            delivery.tracker.add_bytes(count)

        def reopen(offset: int) -> requests.Response:
            return self.api.open_cart(url, delivery.filename, offset=offset, deadline=delivery.deadline,
                                      budget=delivery.budget)

        receiver = CartReceiver(wanted, tops, delivery.destination, delivery.incoming, done or (), received, placed)
        started = time.monotonic()
        while True:
            stream = CartStream(reopen(0), reopen, timeouts=self.api.transport.timeouts, budget=delivery.budget,
                                name=url, deadline=delivery.deadline)
            try:
                delivery.tracker("transferring")
                receiver.receive(stream)
            except StreamBroken as err:
                self._before_restart(err.reason, receiver)
                continue
            finally:
                stream.close()
                delivery.index.remember(verified)
                verified.clear()
            break
        self.state = "received"
        elapsed = time.monotonic() - started
        LOGGER.info(
            "cart %s downloaded: %d files, %d bytes verified and placed in %.2f s (%.1f MB/s)",
            redact(url), len(receiver.done), transferred[0], elapsed, transferred[0] / 1e6 / max(elapsed, 1e-6),
        )

    def _before_restart(self, reason: str, receiver: CartReceiver) -> None:
        """Spend a try on a stream that must start over; wait the backoff, or raise when the budget is spent."""
        total = len(receiver.wanted or receiver.done)
        budget = self._delivery().budget
        delay = budget.spend(reason)
        if delay is None:
            raise TransferError(
                f"the cart's stream kept breaking ({budget.why_spent()}); {len(receiver.done)} of {total} files "
                "were kept, run again to fetch the rest",
                attempts=budget.history,
                cart_url=self.url,
            ) from None
        LOGGER.warning(
            "cart %s stream broke (%s) with %d of %d files verified; starting over in %.1f s",
            redact(self._url()), reason, len(receiver.done), total, delay,
        )
        time.sleep(delay)

    def delete(self, still_staging: bool = False) -> bool:
        """Delete the cart (unless ``keep``); return whether it is gone.  A failure is logged, never raised.

        Cartd has a race: a staging task that loaded the cart before the
        DELETE saves it again afterwards, and the cart comes back to life and
        keeps staging.  So a cart deleted while ``still_staging`` (given up
        before it was ready, or failed while its other files still stage) is
        looked at again a few times over four seconds, and deleted again if it
        reappeared, or if the server cannot say (a second DELETE of a cart
        that is gone is answered 404 and costs nothing).
        """
        if self.keep or self.url is None or self.state in ("new", "deleted"):
            return self.state == "deleted"
        # The download's budget: a server that stopped answering is not waited for again (the ledger keeps
        # the cart for the next run), so the download's error comes within its bound.
        budget = None if self.delivery is None else self.delivery.budget
        try:
            self.api.delete_cart(self.url, budget=budget)
            self.state = "deleted"
            if self.delivery is not None and self.delivery.ledger is not None:
                self.delivery.ledger.remove(self.url)
            for pause in RECHECK_DELETED if still_staging else ():
                time.sleep(pause)
                try:
                    back = self.api.cart_exists(self.url, budget=budget)
                except (DownloaderError, requests.RequestException):
                    back = True
                if back and self.api.delete_cart(self.url, budget=budget):
                    LOGGER.warning("cart %s came back after its deletion (a Cartd race); deleted it again",
                                   redact(self.url))
        except (DownloaderError, requests.RequestException) as err:
            LOGGER.warning("could not delete cart %s: %s", redact(self.url), err)
        return self.state == "deleted"

    def _delivery(self) -> Delivery:
        if self.delivery is None:
            raise ValueError("the cart has no delivery to deliver its files to")
        return self.delivery

    def _url(self) -> str:
        if self.url is None:
            raise ValueError("the cart has not been created")
        return self.url
