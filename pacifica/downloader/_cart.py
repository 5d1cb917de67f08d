"""One cart, from its POST to its DELETE: an object that owns its life on the server.

A :class:`Cart` is created (``POST``), waits while Cartd stages it (``HEAD``
polls on a :class:`PollSchedule`), is received (the tar streamed through a
:class:`CartReceiver`, resumed or started over on the download's one
:class:`RetryBudget`) and is deleted, with the recheck that a cart Cartd
resurrects needs.  Its :attr:`Cart.state` says where it is.

A cart that stays "staging" too long may have been lost by Cartd, or may be
slow; it gets **spares** (see :class:`.config.LostCarts`): more carts of the
same files under new ids, polled with it.  All of them are *copies* of the
one cart, which owns them: the first copy ready is downloaded, the others are
deleted.  A cart knows nothing of the other carts of its download: whoever
drives it (the :mod:`.pipeline`, asking its :mod:`.scheduler`) decides when
each step may run, a spare's POST included.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from ._cartapi import BaseCartAPI
from ._config import LostCarts
from ._exceptions import Cancelled, CartError, CartLost, CartTimeoutError, DownloaderError, StreamBroken, TransferError
from ._incoming import IncomingArea
from ._ledger import CartLedger
from ._polling import Polls, PollSchedule
from ._progress import Tracker
from ._receive import CartReceiver
from ._records import FileRecord
from ._redaction import redact
from ._retry import RetryBudget
from ._stream import CartStream
from ._verified import VerifiedIndex

LOGGER = logging.getLogger(__name__)

#: Pauses (seconds) between the checks that a cart deleted while staging stayed deleted.
RECHECK_DELETED = (0.1, 0.3, 0.6, 1.0, 2.0)


@dataclass
class DownloadContext:
    """Where and how the carts of one download deliver their files; shared by them all.

    ``timeout``: seconds a cart may stage; ``deadline``: the monotonic time
    the whole call must end by; ``cancelled``: set when the download is
    abandoned, which every cart checks between its steps and its chunks;
    ``ledger``: where the carts are written down before their POST (None:
    nowhere); ``lost``: what is done about a cart that stays staging.
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
    lost: LostCarts = field(default_factory=LostCarts)

    def check(self) -> None:
        """Raise :class:`Cancelled` once the download is being abandoned."""
        if self.cancelled.is_set():
            raise Cancelled("another cart of this download failed")

    def wait_limit(self, default: float) -> float:
        """Seconds a cart may stage: the call's ``timeout`` (else ``default``), cut short by its ``deadline``."""
        limit = default if self.timeout is None else self.timeout
        return limit if self.deadline is None else min(limit, self.deadline - time.monotonic())


@dataclass
class _Copy:
    """One cart on the server holding a :class:`Cart`'s files: its first POST, or a spare."""

    url: str
    #: Whether its POST was answered 201 (unknown otherwise: it stays in the ledger for the next run).
    created: bool = False
    #: The monotonic time it began to stage (its POST returned, or the server could begin on it).
    since: float = 0.0
    deleted: bool = False
    #: Deleted before it was ready: Cartd may still run a staging task that brings it back.
    unfinished: bool = False


class Cart:
    """One cart of a download: ``new`` -> ``created`` -> ``ready`` -> ``received`` -> ``deleted``.

    A cart still staging long after it could begin is suspected ``lost``
    (see :class:`.config.LostCarts`): :meth:`wait` raises :class:`CartLost`,
    the driver posts a spare (:meth:`post_spare`) and waits again;
    :attr:`spares` counts them.  :attr:`url` is the copy downloaded (the
    first one until another is ready first).  ``records`` are the files it
    holds (None for a cart created elsewhere, whose files are not known: they
    are received unverified, and it gets no spare).  ``keep`` leaves the
    copy downloaded on the server at the end.

    >>> cart = Cart(api, records, context)       # doctest: +SKIP
    >>> cart.create(); cart.wait(); cart.receive(); cart.delete()    # doctest: +SKIP
    """

    def __init__(
        self,
        api: BaseCartAPI,
        records: list[FileRecord] | None,
        context: DownloadContext | None,
        *,
        keep: bool = False,
        url: str | None = None,
    ) -> None:
        """A cart of ``records``; with ``url``, one that already exists on the server (state ``created``).

        ``context`` may come later (it is needed from :meth:`create` on; :meth:`delete` does without).
        """
        self.api = api
        self.records = records
        self.context = context
        self.keep = keep
        self.url = url
        self.state = "new" if url is None else "created"
        self.copies: list[_Copy] = [] if url is None else [_Copy(url, created=True)]
        self._waiting_since: float | None = None  # the first wait's start: spares do not extend the limit
        self._wait_ends = 0.0
        self._draw = random.random()  # where this cart's spares fall within LostCarts.jitter

    @property
    def spares(self) -> int:
        """How many spares of this cart were posted (or are being posted)."""
        return max(0, len(self.copies) - 1)

    def create(self) -> str:
        """POST the cart; return its URL."""
        if self.records is None:
            raise ValueError("a cart of unknown files cannot be created")
        context = self._context()
        context.check()
        url = self.api.new_cart_url()
        ledger = None if self.keep else context.ledger
        if ledger is not None:
            ledger.add(url)  # before the POST: a run killed during it still leaves a record
        self.url = url
        try:
            self.api.post_cart(url, self.records, budget=context.budget)
        except CartError:
            if ledger is not None:
                ledger.remove(url)  # Cartd answered and refused: no cart was made
            raise
        # Any other failure leaves it unknown whether the cart was made: it stays in the ledger (the next run
        # deletes it if it exists), and state "new" means this run sends no DELETE for it.
        self.state = "created"
        self.copies = [_Copy(self.url, created=True, since=time.monotonic())]
        context.tracker.cart_created(self.url)
        return self.url

    def wait(self, schedule: PollSchedule = PollSchedule(), relaxed: threading.Event | None = None) -> None:
        """Poll every copy until one is ready (see :mod:`.polling`); raise its typed error if staging fails.

        ``relaxed``, once set, says nothing waits for the moment it is ready
        (no near-polls).  The first copy's staging is counted from the first
        call (the driver calls once the server can begin on it), a spare's
        from its POST; once the newest copy has staged
        :meth:`.LostCarts.spare_after` seconds, :class:`CartLost` is raised
        for the driver to :meth:`post_spare`, unless every spare allowed is
        posted.  The wait limit (``timeout``, ``Timeouts.wait``) counts from
        the first call, spares included; past it, :class:`CartTimeoutError`.
        """
        url, context = self._url(), self._context()
        timeouts, lost = self.api.transport.timeouts, context.lost
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
            self._wait_ends = now + context.wait_limit(timeouts.wait)
            self.copies[0].since = now
        due = None
        if self.records is not None and self.spares < lost.spares:
            due = self.copies[-1].since + lost.spare_after(len(self.records), self._draw) - now

        polls = Polls(
            schedule,
            max(self._wait_ends - now, 0.0),
            url,
            relaxed=relaxed,
            lost_after=None if due is None else max(due, 0.0),
        )
        try:
            for deadline in polls:
                try:
                    status = self._probe(deadline)
                except CartTimeoutError as err:
                    raise polls.timed_out() from err
                polls.answered(status)
                if status != "ready":
                    context.check()
                    context.tracker("staging")
        except CartLost:
            self.state = "lost"
            LOGGER.warning(
                "cart %s still staging %.0f s after it could begin: Cartd may have lost it; posting a spare "
                "(%d of %d; the first copy ready is downloaded, every other deleted)",
                redact(url),
                time.monotonic() - self._waiting_since,
                self.spares + 1,
                lost.spares,
            )
            raise
        except CartTimeoutError as err:
            if not self.spares:
                raise
            raise CartTimeoutError(
                f"the cart {redact(url)} and its {self.spares} spare(s) were still staging after "
                f"{time.monotonic() - self._waiting_since:.0f} s: Cartd seems to lose its tasks (look for errors "
                "in its Celery worker's log, such as 'database is locked' on SQLite) or stages far slower than "
                "usual; raise the timeout for a slow archive",
                cart_url=url,
            ) from err.__cause__
        self.state = "ready"

    def _probe(self, deadline: float) -> str:
        """Ask how each copy is doing, oldest first; "ready" as soon as one is (it becomes :attr:`url`)."""
        context = self._context()
        for copy in self.copies:
            if not copy.created or copy.deleted:
                continue
            status = self.api.probe(copy.url, deadline=deadline, budget=context.budget)
            if status == "ready":
                if copy.url != self.url:
                    LOGGER.info(
                        "spare %s of cart %s was ready first; downloading it", redact(copy.url), redact(self._url())
                    )
                    self.url = copy.url
                return status
        return "staging"

    def post_spare(self) -> None:
        """POST a spare of the cart: the same files under a new id (see :class:`.config.LostCarts`)."""
        context = self._context()
        if self.records is None:
            raise ValueError("a cart of unknown files cannot get a spare")
        context.check()
        copy = _Copy(self.api.new_cart_url())
        self.copies.append(copy)
        if context.ledger is not None:
            context.ledger.add(copy.url)  # before the POST, as every cart
        try:
            self.api.post_cart(copy.url, self.records, budget=context.budget)
        except CartError:
            if context.ledger is not None:
                context.ledger.remove(copy.url)  # Cartd answered and refused: no cart was made
            self.copies.remove(copy)
            raise
        copy.created, copy.since = True, time.monotonic()
        self.state = "created"
        context.tracker.spare_posted()

    def drop_spares(self) -> None:
        """Delete every copy but the one ready (:attr:`url`), which the download goes on with."""
        self._delete([copy for copy in self.copies if copy.url != self.url], unfinished=True)

    def receive(self, done: set[str] | None = None) -> None:
        """Stream the ready cart into place; start over (skipping verified files) when it breaks.

        ``done`` holds the paths already in place, whose bytes are skipped.
        """
        url, context = self._url(), self._context()
        wanted = None if self.records is None else {record.path: record for record in self.records}
        tops = {context.filename.replace(".tar", ""), url.rsplit("/", 1)[-1]}
        verified: list[tuple[str, str, str, str]] = []  # recorded in the index once per try, not per file
        transferred = 0

        def reopen(offset: int) -> requests.Response:
            return self.api.open_cart(
                url, context.filename, offset=offset, deadline=context.deadline, budget=context.budget
            )

        receiver = CartReceiver(wanted, tops, context.destination, context.incoming, done or ())
        started = time.monotonic()
        while True:
            stream = CartStream(
                reopen(0),
                reopen,
                timeouts=self.api.transport.timeouts,
                budget=context.budget,
                name=url,
                deadline=context.deadline,
            )
            try:
                context.tracker("transferring")
                # closed at once when this stops early (a cancel): the file half written goes with it
                with contextlib.closing(receiver.receive(stream)) as steps:
                    for step in steps:
                        if isinstance(step, int):
                            context.check()
                            transferred += step
                            context.tracker.add_bytes(step)
                        else:
                            if step.record is not None:  # a file of an unknown cart is not verified: never trusted
                                verified.append(
                                    (
                                        f"{context.filename}/{step.record.path}",
                                        step.path,
                                        step.record.hashtype,
                                        step.record.hashsum,
                                    )
                                )
                            context.tracker.file_placed()
            except StreamBroken as err:
                self._before_restart(err.reason, receiver)
                continue
            finally:
                stream.close()
                context.index.remember(verified)
                verified.clear()
            break
        self.state = "received"
        elapsed = time.monotonic() - started
        LOGGER.info(
            "cart %s downloaded: %d files, %d bytes verified and placed in %.2f s (%.1f MB/s)",
            redact(url),
            len(receiver.done),
            transferred,
            elapsed,
            transferred / 1e6 / max(elapsed, 1e-6),
        )

    def _before_restart(self, reason: str, receiver: CartReceiver) -> None:
        """Spend a try on a stream that must start over; wait the backoff, or raise when the budget is spent."""
        total = len(receiver.wanted or receiver.done)
        budget = self._context().budget
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
            redact(self._url()),
            reason,
            len(receiver.done),
            total,
            delay,
        )
        time.sleep(delay)

    def delete(self, still_staging: bool = False) -> bool:
        """Delete every copy of the cart (but the one downloaded, with ``keep``); return whether all are gone.

        A failure is logged, never raised.  Cartd has a race: a staging task
        that loaded a cart before the DELETE saves it again afterwards, and
        the cart comes back to life and keeps staging.  So a copy deleted
        before it was ready (a spare dropped, or the cart given up
        ``still_staging``, or failed while its other files still stage) is
        looked at again a few times over four seconds, and deleted again if it
        reappeared, or if the server cannot say (a second DELETE of a cart
        that is gone is answered 404 and costs nothing).
        """
        if self.state in ("new", "deleted"):
            return self.state == "deleted"
        targets = [copy for copy in self.copies if not (self.keep and copy.url == self.url)]
        self._delete(targets, unfinished=still_staging)
        # The download's budget: a server that stopped answering is not waited for again (the ledger keeps
        # the cart for the next run), so the download's error comes within its bound.
        budget = None if self.context is None else self.context.budget
        rechecked = [copy for copy in targets if copy.deleted and copy.unfinished]
        for pause in RECHECK_DELETED if rechecked else ():
            time.sleep(pause)
            for copy in rechecked:
                try:
                    back = self.api.cart_exists(copy.url, budget=budget)
                except (DownloaderError, requests.RequestException):
                    back = True  # the server cannot say: a second DELETE costs nothing
                try:
                    if back and self.api.delete_cart(copy.url, budget=budget):
                        LOGGER.warning(
                            "cart %s came back after its deletion (a Cartd race); deleted it again", redact(copy.url)
                        )
                except (DownloaderError, requests.RequestException) as err:
                    LOGGER.warning("could not delete cart %s again: %s", redact(copy.url), err)
        for copy in rechecked:
            copy.unfinished = False
        gone = all(copy.deleted for copy in targets if copy.created)
        if self.keep and self.context is not None and self.context.ledger is not None and self.url is not None:
            self.context.ledger.remove(self.url)  # a spare downloaded and kept on purpose: no next run deletes it
        if gone and not self.keep:
            self.state = "deleted"
        return gone

    def _delete(self, copies: list[_Copy], unfinished: bool) -> None:
        """DELETE each created copy not deleted yet; note it in the ledger; log (never raise) a failure."""
        budget = None if self.context is None else self.context.budget
        ledger = None if self.context is None else self.context.ledger
        for copy in copies:
            if copy.deleted or not copy.created:
                continue
            try:
                self.api.delete_cart(copy.url, budget=budget)
            except (DownloaderError, requests.RequestException) as err:
                LOGGER.warning("could not delete cart %s: %s", redact(copy.url), err)
                continue
            copy.deleted, copy.unfinished = True, unfinished or copy.url != self.url
            if ledger is not None:
                ledger.remove(copy.url)

    def _context(self) -> DownloadContext:
        if self.context is None:
            raise ValueError("the cart has no context to deliver its files to")
        return self.context

    def _url(self) -> str:
        if self.url is None:
            raise ValueError("the cart has not been created")
        return self.url
