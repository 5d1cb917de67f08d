"""The entry point: turn an event or document into verified files in a download directory.

:class:`Downloader` checks the input, skips files already present with the
right content, asks Cartd for a cart of the rest, waits for it, streams and
verifies it into place, and deletes the cart on the server whatever happens.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, overload

import requests

from .calls import PathLike, as_path, call_style, url_call_style
from .cart import Cart, Delivery
from .cartapi import CartAPI
from .cloudevent import event_records
from .config import LostCarts, Timeouts, check_seconds
from .exceptions import DestinationError, InvalidInputError
from .incoming import IncomingArea, hidden_folder, os_error
from .ledger import CartLedger
from .permissions import make_folders
from .pipeline import run_carts
from .plan import Plan, plan_download
from .policy import transaction_records
from .progress import ProgressCallback, Tracker
from .records import FileRecord, check_folder_name, validate_records
from .retry import Retry
from .split import CartLimits, split_batches
from .transport import redact
from .verified import VerifiedIndex

__all__ = ["Downloader"]

LOGGER = logging.getLogger(__name__)

class Downloader:
    """Downloads the files of Pacifica events and documents through a Cartd cart.

    The seed's style: the download directory and the Cartd URL up front;
    each call returns the paths of the files.

    >>> down = Downloader(down_path, "http://127.0.0.1:8081")      # doctest: +SKIP
    >>> down.cloudevent(cloud_event)                                # doctest: +SKIP
    ['/tmp/x/data/a/b/foo.txt', ...]

    The 0.4 style, still supported: the location with each call, which then
    returns None, as 0.4.1 did (``sys.exit(main())`` callers exit 0).

    >>> down = Downloader(cart_api_url="http://127.0.0.1:8081")    # doctest: +SKIP
    >>> down.cloudevent(down_path, cloud_event, timeout=600, filename="data")  # doctest: +SKIP
    """

    def __init__(
        self,
        location: PathLike | None = None,
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
        keep_cart: bool = False,
        overwrite: bool = True,
        progress: ProgressCallback | None = None,
        limits: CartLimits = CartLimits(),
        trust_verified: bool = True,
        lost_carts: LostCarts = LostCarts(),
    ) -> None:
        """Prepare downloads into ``location`` from the Cartd at ``cart_api_url``.

        ``location`` is the download directory, created when needed (it may
        instead be given with each call).  ``cart_api_url`` defaults to the
        environment as in 0.4.1 (``CARTD_CART_API_URL``; else ``proto``,
        ``addr`` and ``port``, each from its keyword or ``CARTD_PROTO``,
        ``CARTD_ADDR``, ``CARTD_PORT``; else ``http://127.0.0.1:8081``).
        ``auth``: a requests auth object, a ``(user, password)`` tuple, or a
        dict of requests arguments (``auth``, ``cert``, ``verify``,
        ``headers``, ``proxies``).  ``session``: a ``requests.Session`` to
        reuse.  ``extra_args``: more members of the cart request, e.g.
        ``{"bundle": True}``.  ``timeouts`` and ``retry``: see
        :class:`Timeouts` and :class:`Retry`.  ``keep_cart=True`` leaves the
        cart on the server after the download.  ``overwrite=False`` refuses
        to replace an existing file whose content differs, instead of
        replacing it once the new one is verified.  ``progress`` is called
        with a :class:`Progress` at each step (see :mod:`.progress`).
        ``limits`` says how large events are cut into carts and how many
        stage at once (see :class:`CartLimits`).  ``trust_verified=False``
        hashes every existing file again instead of trusting the record of
        files verified earlier and unchanged since (see :mod:`.verified`).
        ``lost_carts`` says when a cart that stays staging gets a spare (see
        :class:`LostCarts`).  A bad argument raises :class:`InvalidInputError`.
        """
        problems = [
            f"{name} must be a {kind.__name__}, not {type(value).__name__}"
            for name, value, kind in (("timeouts", timeouts, Timeouts), ("retry", retry, Retry),
                                      ("limits", limits, CartLimits), ("lost_carts", lost_carts, LostCarts))
            if not isinstance(value, kind)
        ]
        if progress is not None and not callable(progress):
            problems.append(f"progress must be a callable, not {type(progress).__name__}")
        if problems:
            raise InvalidInputError("the downloader cannot be built", problems)
        self.location = None if location is None else as_path(location)
        self.cart_api = CartAPI(
            cart_api_url, proto=proto, addr=addr, port=port, auth=auth, session=session, extra_args=extra_args,
            timeouts=timeouts, retry=retry,
        )
        self.keep_cart = keep_cart
        self.overwrite = overwrite
        self.progress = progress
        self.limits = limits
        self.trust_verified = trust_verified
        self.lost_carts = lost_carts

    # -- the documented download methods -----------------------------------

    @overload
    def cloudevent(
        self, cloudevent: Any, *, filename: str = ..., timeout: float | None = ..., deadline: float | None = ...
    ) -> list[str]: ...

    @overload
    def cloudevent(
        self, location: PathLike, cloudevent: Any, *, filename: str = ..., timeout: float | None = ...,
        deadline: float | None = ...,
    ) -> None: ...

    def cloudevent(self, *args: Any, **kwargs: Any) -> list[str] | None:
        """Download the files of a Pacifica Notifications CloudEvent.

        ``down.cloudevent(event)`` returns the files' paths;
        ``down.cloudevent(location, event)``, the 0.4 style (the location
        given with the call, also as ``location=``), returns None as 0.4.1
        did.  Keywords: ``filename`` (the folder inside the location the
        files land in, default ``"data"``), ``timeout`` (seconds to wait for
        the cart, default an hour), ``deadline`` (seconds for the whole
        call).  Files land in ``location/filename/<subdir>/<name>``.
        """
        location, event, options = call_style(args, kwargs, "cloudevent")
        paths = self._download(event_records(event), location, **options)
        return None if location is not None else paths

    @overload
    def transactioninfo(
        self, transinfo: Any, *, filename: str = ..., timeout: float | None = ..., deadline: float | None = ...
    ) -> list[str]: ...

    @overload
    def transactioninfo(
        self, location: PathLike, transinfo: Any, *, filename: str = ..., timeout: float | None = ...,
        deadline: float | None = ...,
    ) -> None: ...

    def transactioninfo(self, *args: Any, **kwargs: Any) -> list[str] | None:
        """Download the files of a Pacifica Policy transaction-info document.

        ``down.transactioninfo(doc)`` returns the files' paths;
        ``down.transactioninfo(location, doc)`` returns None, as 0.4.1 did;
        keywords as :meth:`cloudevent`.
        """
        location, document, options = call_style(args, kwargs, "transinfo")
        paths = self._download(transaction_records(document), location, **options)
        return None if location is not None else paths

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
        seconds = None if deadline is None else check_seconds(deadline, "deadline")
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
            delivery = Delivery(destination, folder, incoming, tracker, index,
                                self.cart_api.transport.new_budget(), timeout=wait, deadline=call_deadline,
                                ledger=ledger, lost=self.lost_carts)
            try:
                carts = [Cart(self.cart_api, batch, delivery, keep=self.keep_cart)
                         for batch in split_batches(todo, self.limits)]
                run_carts(carts, self.limits.max_staging, delivery.cancelled)
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

    # -- the released private step -------------------------------------------

    def _download_from_url(self, *args: Any, **kwargs: Any) -> None:
        """Fetch a ready cart by its URL into ``location/filename``; delete it after (the released private step).

        pacifica-dispatcher calls it after ``cart_api.setup_cart()`` and
        ``cart_api.wait_for_cart()``, with 0.4.1's arguments
        ``(location, cart_url, filename)``; 0.3.0 took ``(cart_url,
        filename)`` on a downloader built with its location.  It gives the
        guarantees of the rest of the library: the tar is read strictly,
        nothing partial appears under a final name, and the cart is deleted
        after (unless ``keep_cart``).  A cart created by this downloader's
        :class:`CartAPI` has every file verified against the records posted
        and must hold exactly those; for a cart URL it never saw, there are
        no hashes to check (a warning says so) and any regular file below
        the cart's folder is taken, under the same rules of safety.
        """
        location, cart_url, filename = url_call_style(args, kwargs)
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
                "only against the rules of a safe archive", redact(cart_url),
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
            cart.delivery = Delivery(root / folder, folder, incoming, tracker, index,
                                     self.cart_api.transport.new_budget(), lost=LostCarts(spares=0))
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
        plan = plan_download(records, root, folder, index, overwrite=self.overwrite,
                             trust_verified=self.trust_verified)
        if plan.conflicts:
            shown = ", ".join(plan.conflicts[:5]) + (" ..." if len(plan.conflicts) > 5 else "")
            raise DestinationError(
                f"{len(plan.conflicts)} file(s) exist with other content and overwrite=False: {shown}; "
                "move them or allow overwrite",
                path=plan.conflicts[0],
            )
        return plan
