"""The entry point: turn an event or document into verified files in a download directory.

:class:`Downloader` checks the input, skips files already present with the
right content, asks Cartd for a cart of the rest, waits for it, streams and
verifies it into place, and deletes the cart on the server whatever happens.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Union

from ._cart import Cart, DownloadContext
from ._cartapi import BaseCartAPI
from ._config import LostCarts, check_seconds
from ._exceptions import DestinationError, InvalidInputError, os_error
from ._incoming import IncomingArea, hidden_folder
from ._ledger import CartLedger
from ._permissions import make_folders
from ._pipeline import run_carts
from ._plan import Plan, plan_download
from ._progress import ProgressCallback, Tracker
from ._records import FileRecord, check_folder_name, validate_records
from ._redaction import redact
from ._split import CartLimits, split_batches
from ._verified import VerifiedIndex

LOGGER = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


def as_path(location: Any) -> Path:
    """The download directory given as a string or path; anything else is refused."""
    if isinstance(location, bytes) or not isinstance(location, (str, os.PathLike)):
        raise InvalidInputError(f"the location must be a path (str or os.PathLike), not {type(location).__name__}")
    return Path(location)


class BaseDownloader:
    """Downloads lists of file records through Cartd carts: the core of the public
    :class:`~pacifica.downloader.Downloader`, which adds the event and document methods and the
    released call styles (:mod:`._compat`).
    """

    def __init__(
        self,
        location: PathLike | None,
        cart_api: BaseCartAPI,
        *,
        keep_cart: bool = False,
        overwrite: bool = True,
        progress: ProgressCallback | None = None,
        limits: CartLimits = CartLimits(),
        trust_verified: bool = True,
        lost_carts: LostCarts = LostCarts(),
    ) -> None:
        """Download into ``location`` (or the location given with each call) through ``cart_api``.

        The keywords are those of :class:`~pacifica.downloader.Downloader`; a bad one raises
        :class:`InvalidInputError`.
        """
        problems = [
            f"{name} must be a {kind.__name__}, not {type(value).__name__}"
            for name, value, kind in (
                ("limits", limits, CartLimits),
                ("lost_carts", lost_carts, LostCarts),
                ("cart_api", cart_api, BaseCartAPI),
            )
            if not isinstance(value, kind)
        ]
        if progress is not None and not callable(progress):
            problems.append(f"progress must be a callable, not {type(progress).__name__}")
        if problems:
            raise InvalidInputError("the downloader cannot be built", problems)
        self.location = None if location is None else as_path(location)
        self.cart_api = cart_api
        self.keep_cart = keep_cart
        self.overwrite = overwrite
        self.progress = progress
        self.limits = limits
        self.trust_verified = trust_verified
        self.lost_carts = lost_carts

    def download(
        self,
        records: Iterable[Any],
        location: PathLike | None = None,
        *,
        filename: str = "data",
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> list[str]:
        """Download ``records`` (file records or Cartd ``fileids`` entries); return every file's path.

        Files already present with the right hash are not fetched again, and
        when none is missing no cart is made.  After a successful call every
        returned path holds content verified against its hash.  Unlike the
        0.4 style of :meth:`cloudevent`, it returns the paths whether or not
        ``location`` is given.
        """
        if isinstance(records, (str, bytes, dict)) or not isinstance(records, Iterable):
            raise InvalidInputError(f"records must be a list of file records, not {type(records).__name__}")
        checked = validate_records(((str(index), record) for index, record in enumerate(records)), what="files")
        return self._download(checked, location, filename=filename, timeout=timeout, deadline=deadline)

    def _download(
        self,
        checked: list[FileRecord],
        location: PathLike | None,
        *,
        filename: str = "data",
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> list[str]:
        """Download records already checked by :func:`validate_records`."""
        folder = check_folder_name(filename)
        wait = None if timeout is None else check_seconds(timeout, "timeout")
        # the call's deadline, else the one of Timeouts (None: the call has no bound of its own)
        seconds = self.cart_api.transport.timeouts.deadline if deadline is None else check_seconds(deadline, "deadline")
        root = self._location(location)
        destination = root / folder
        paths = [str(destination / record.path) for record in checked]
        if not checked:
            LOGGER.info("no files to download; no cart created")
            return paths
        call_deadline = None if seconds is None else time.monotonic() + seconds
        hidden = hidden_folder(root)
        index = VerifiedIndex(hidden)
        ledger = CartLedger(hidden, self.cart_api.cart_api_url)
        try:
            ledger.take_over(self._delete_orphan)
            todo = self._plan(checked, root, folder, index).fetch
            if not todo:
                LOGGER.info("all %d files already present and verified; no cart created", len(checked))
                return paths
            LOGGER.info("%d of %d files to fetch into %s", len(todo), len(checked), destination)
            tracker = Tracker(self.progress, todo)
            tracker("validating")
            incoming = IncomingArea(root)
            context = DownloadContext(
                destination,
                folder,
                incoming,
                tracker,
                index,
                self.cart_api.transport.new_budget(),
                timeout=wait,
                deadline=call_deadline,
                ledger=ledger,
                lost=self.lost_carts,
            )
            try:
                carts = [
                    Cart(self.cart_api, batch, context, keep=self.keep_cart)
                    for batch in split_batches(todo, self.limits)
                ]
                run_carts(carts, self.limits.max_staging, context.cancelled)
            finally:
                incoming.remove()
            tracker("done")
            return paths
        finally:
            ledger.close()
            index.close()

    def _delete_orphan(self, cart_url: str) -> bool:
        """Delete a cart a run that died left behind (it may still be staging); say whether it is gone."""
        return Cart(self.cart_api, None, None, url=cart_url).delete(still_staging=True)

    def fetch_cart(self, location: PathLike | None, cart_url: str, filename: str = "data") -> None:
        """Fetch the cart at ``cart_url`` (already ready) into ``location/filename``; delete it after.

        A cart created by this downloader's cart API has every file verified against the records posted
        and must hold exactly those; for a cart URL it never saw, there are no hashes to check (a warning
        says so) and any regular file below the cart's folder is taken, under the same rules of safety.
        """
        folder = check_folder_name(filename)
        if not isinstance(cart_url, str) or not cart_url.startswith(("http://", "https://")):
            shown = redact(cart_url) if isinstance(cart_url, str) else cart_url
            raise InvalidInputError(f"cart_url must be an http:// or https:// URL, got {shown!r}")
        cart_url = self.cart_api._clean(cart_url)  # its credentials, if any, become the transport's
        root = self._location(location)
        records = self.cart_api.posted_records(cart_url)
        if records is None:
            LOGGER.warning(
                "cart %s was not created by this downloader: its files cannot be checked against their hashes, "
                "only against the rules of a safe archive",
                redact(cart_url),
            )
        index = VerifiedIndex(hidden_folder(root))
        incoming: IncomingArea | None = None
        cart = Cart(self.cart_api, records, None, keep=self.keep_cart, url=cart_url)
        try:
            done: set[str] = set()
            if records is not None:
                done = {record.path for record in self._plan(records, root, folder, index).present}
            tracker = Tracker(self.progress, records or [])
            incoming = IncomingArea(root)
            # The released flow hands over a cart already ready: no spare is posted for it.
            cart.context = DownloadContext(
                root / folder,
                folder,
                incoming,
                tracker,
                index,
                self.cart_api.transport.new_budget(),
                lost=LostCarts(spares=0),
            )
            cart.wait()  # already ready in the released flow: one HEAD
            cart.receive(done)
            tracker("done")
        finally:
            if incoming is not None:
                incoming.remove()
            index.close()
            cart.delete()

    # -- the steps ---------------------------------------------------------------

    def _location(self, location: PathLike | None) -> Path:
        root = as_path(location) if location is not None else self.location
        if root is None:
            raise InvalidInputError("no download location: pass it to Downloader() or to the download method")
        try:
            make_folders(root)
        except OSError as err:
            raise os_error(err, str(root), "create the download directory") from err
        return root

    def _plan(self, records: list[FileRecord], root: Path, folder: str, index: VerifiedIndex) -> Plan:
        """Decide what to fetch (see :mod:`.plan`); refuse, before any request, files ``overwrite`` protects."""
        plan = plan_download(records, root, folder, index, overwrite=self.overwrite, trust_verified=self.trust_verified)
        if plan.conflicts:
            shown = ", ".join(plan.conflicts[:5]) + (" ..." if len(plan.conflicts) > 5 else "")
            raise DestinationError(
                f"{len(plan.conflicts)} file(s) exist with other content and overwrite=False: {shown}; "
                "move them or allow overwrite",
                path=plan.conflicts[0],
            )
        return plan
