"""Run the carts of one download through their lives, overlapping one cart's staging with another's transfer.

:func:`run_carts` takes the :class:`.cart.Cart` objects of a download (one
per batch of :func:`.split.split_batches`) and runs each one's steps,
create, wait, receive and delete, asking the :class:`.scheduler.Scheduler`
before each: at most ``max_staging`` carts stage at once, the next cart is
created shortly before one becomes ready, and each ready cart is received
and deleted while the next ones stage.  When one cart fails, the others are
cancelled and deleted, and the first error is raised.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait

from ._cart import Cart
from ._exceptions import Cancelled, CartFailedError, CartLost, CartTimeoutError, TransferError
from ._polling import PollSchedule
from ._scheduler import Scheduler

LOGGER = logging.getLogger(__name__)

#: Why a cart may be deleted while Cartd still runs staging tasks for it: given up (cancelled, Ctrl-C, timed
#: out, or the server stopped answering) or failed while its other files still stage.
ABANDONED = (Cancelled, KeyboardInterrupt, CartTimeoutError, CartFailedError, TransferError)


def run_carts(carts: list[Cart], max_staging: int, cancelled: threading.Event | None = None) -> None:
    """Run every cart from its POST to its DELETE, in order, overlapping staging and transfers.

    A single cart runs in the calling thread.  On the first failure (or a
    KeyboardInterrupt) every other cart is cancelled (``cancelled`` is set),
    waited for (so each deletes itself), and the error raised.
    """
    scheduler = Scheduler(max_staging, [len(cart.records or ()) for cart in carts], cancelled)
    if len(carts) == 1:
        _run_cart(carts[0], scheduler, 0)
        return
    workers = min(len(carts), max_staging + 2)  # room for transfers while others stage
    LOGGER.info("download split into %d carts, %d staging at once", len(carts), max_staging)
    try:
        _run_pool(carts, scheduler, workers)
    finally:
        scheduler.run_pending_writes()


def _run_cart(cart: Cart, scheduler: Scheduler, turn: int) -> None:
    """Take the ``turn``-th cart through its life when the scheduler allows each step; always delete it."""
    scheduler.check()
    with scheduler.staging(turn):
        try:
            try:
                cart.create()
            finally:
                scheduler.created(turn)
            scheduler.wait_to_begin(turn)
            _wait(cart, scheduler, turn)
        except BaseException as error:  # a cart whose POST failed has nothing to delete
            # Given up while the server may still run tasks for it: make sure it stays deleted.
            cart.delete(still_staging=isinstance(error, ABANDONED))
            raise
    if cart.spares:  # before the next cart is created, so that the spares' queued tasks do not delay it
        scheduler.write_when_safe(cart.drop_spares)
    scheduler.wait_for_next_cart(turn)
    try:
        cart.receive()
    except BaseException:
        cart.delete()
        raise
    scheduler.write_when_safe(cart.delete)


def _wait(cart: Cart, scheduler: Scheduler, turn: int) -> None:
    """Wait until a copy of the cart is ready; post a spare whenever it is suspected lost, at a moment safe for
    the rest (see ``LostCarts``)."""
    while True:
        try:
            cart.wait(PollSchedule(expect=scheduler.expected(turn)), relaxed=scheduler.followed(turn))
            return
        except CartLost:
            scheduler.write_when_safe(cart.post_spare)
            scheduler.spare_posted(turn)


def _run_pool(carts: list[Cart], scheduler: Scheduler, workers: int) -> None:
    """Run the carts on ``workers`` threads; cancel the rest at the first failure; raise it."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pacifica-cart")
    futures: list[Future[None]] = [pool.submit(_run_cart, cart, scheduler, turn) for turn, cart in enumerate(carts)]
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    except BaseException:
        scheduler.cancelled.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    failed = [future for future in done if future.exception() is not None]
    if failed:
        scheduler.cancelled.set()
    pool.shutdown(wait=True, cancel_futures=True)
    errors = [
        error
        for future in futures
        if future.done() and not future.cancelled()
        for error in [future.exception()]
        if error is not None and not isinstance(error, Cancelled)
    ]
    if errors:
        raise errors[0]
