"""One timed download with this library, run in its own process by ``run.py``.

::

    python client_current.py e2e      --cart-url URL --event EVENT.json --dest DIR [--record-carts FILE]
    python client_current.py rerun    --cart-url URL --event EVENT.json --dest DIR
    python client_current.py transfer --cart-url URL --event EVENT.json --dest DIR --ready-carts FILE

``e2e`` and ``rerun`` time ``Downloader.cloudevent(dest, event)`` with the
library's defaults (``rerun`` is the same call into a folder that already
holds the files); ``--max-staging N`` sets ``CartLimits(max_staging=N)``
instead, for a stack with N workers.  ``--record-carts`` writes down which
files went into each cart the library asked for (``setup_cart`` is wrapped
to note the paths; nothing else changes).

``transfer`` times the same call when every cart it will ask for is already
staged (``--one-cart``: the library is told to ask for the whole event as one
cart, so that it transfers the very cart ``curl | tar`` does): ``run.py``
creates carts of exactly the recorded file sets and waits until they are
ready, and the downloader's :class:`CartAPI` is swapped for one whose
``setup_cart`` hands back the ready cart of the files asked for instead of
posting a new one.  The time covers reading the event, one
``HEAD`` per cart (which answers "ready"), the ``GET``\\ s, extraction,
hashing and placing of every file; the carts are kept (``keep_cart=True``)
and deleted by ``run.py``.

Interpreter start-up and imports are outside the timing.  The result is one
JSON line on stdout: ``{"seconds": ..., "files": ..., "peak_rss_kib": ...}``,
the last being this process's VmHWM (its own high-water mark since exec).
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

from rss import peak_rss_kib

from pacifica.downloader import CartAPI, CartLimits, Downloader, RetryBudget

Entries = Callable[[], Iterator[dict[str, Any]]]


class ReadyCartAPI(CartAPI):
    """A CartAPI whose ``setup_cart`` returns an existing, ready cart of the same files instead of creating one."""

    def __init__(self, cart_api_url: str, ready: dict[frozenset[str], str]) -> None:
        """Serve the carts ``ready`` maps (set of paths -> cart URL) from ``cart_api_url``."""
        super().__init__(cart_api_url)
        self.ready = ready

    def setup_cart(
        self, yield_files: Entries, *, budget: RetryBudget | None = None, cart_url: str | None = None
    ) -> str:
        """Return the ready cart holding exactly the files asked for (``cart_url`` is not used)."""
        asked = frozenset(str(entry["path"]) for entry in yield_files())
        cart_url = self.ready.get(asked)
        if cart_url is None:
            raise RuntimeError(f"the library asked for a cart of {len(asked)} files that the bench did not stage "
                               f"(it staged carts of {sorted(len(paths) for paths in self.ready)} files)")
        return cart_url


def record_carts(down: Downloader, carts: list[list[str]]) -> None:
    """Wrap ``down``'s ``setup_cart`` so that the paths of each cart it makes are appended to ``carts``."""
    original = down.cart_api.setup_cart
    lock = threading.Lock()

    def setup_cart(yield_files: Entries, *, budget: RetryBudget | None = None, cart_url: str | None = None) -> str:
        entries = list(yield_files())
        with lock:
            carts.append([str(entry["path"]) for entry in entries])
        return original(lambda: iter(entries), budget=budget, cart_url=cart_url)

    down.cart_api.setup_cart = setup_cart  # type: ignore[method-assign]


def make_downloader(args: argparse.Namespace) -> Downloader:
    """The downloader the mode asks for: defaults, or more carts staging at once, or ready carts."""
    options: dict[str, Any] = {}
    if args.one_cart:
        options["limits"] = CartLimits(max_files=10**9, max_bytes=2**62)
    elif args.max_staging:
        options["limits"] = CartLimits(max_staging=args.max_staging)
    if args.mode != "transfer":
        return Downloader(cart_api_url=args.cart_url, **options)
    with open(args.ready_carts) as handle:
        ready = {frozenset(cart["paths"]): cart["url"] for cart in json.load(handle)}
    down = Downloader(cart_api_url=args.cart_url, keep_cart=True, **options)
    down.cart_api = ReadyCartAPI(args.cart_url, ready)
    return down


def main(argv: list[str]) -> int:
    """Run one timed download; print its JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("e2e", "rerun", "transfer"))
    parser.add_argument("--cart-url", required=True)
    parser.add_argument("--event", required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--ready-carts", help="JSON list of {url, paths}: the staged carts (transfer)")
    parser.add_argument("--record-carts", help="write the paths of each cart made here, as JSON")
    parser.add_argument("--max-staging", type=int, help="CartLimits(max_staging=N) instead of the default")
    parser.add_argument("--one-cart", action="store_true", help="ask for the whole event as one cart")
    args = parser.parse_args(argv)
    if args.mode == "transfer" and not args.ready_carts:
        parser.error("transfer needs --ready-carts")
    with open(args.event) as handle:
        event = json.load(handle)
    down = make_downloader(args)
    carts: list[list[str]] = []
    if args.record_carts:
        record_carts(down, carts)
    started = time.perf_counter()
    down.cloudevent(args.dest, event)  # the 0.4 call style, as the release is timed; it returns None
    seconds = time.perf_counter() - started
    files = sum(1 for obj in event["data"] if obj.get("destinationTable") == "Files")
    if args.record_carts:
        with open(args.record_carts, "w") as handle:
            json.dump(carts, handle)
    print(json.dumps({"seconds": seconds, "files": files, "carts": len(carts) or None,
                      "peak_rss_kib": peak_rss_kib()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
