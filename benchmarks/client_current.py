"""One timed download with this library, run in its own process by ``run.py``.

::

    python client_current.py e2e      --cart-url URL --event EVENT.json --dest DIR [--record-carts FILE]
    python client_current.py rerun    --cart-url URL --event EVENT.json --dest DIR
    python client_current.py transfer --cart-url URL --event EVENT.json --dest DIR --ready-carts FILE

``e2e`` and ``rerun`` time ``Downloader.cloudevent(dest, event)`` with the
library's defaults (``rerun`` is the same call into a folder that already
holds the files); ``--max-staging N`` sets ``CartLimits(max_staging=N)``
instead, for a stack with N workers.  ``--record-carts`` writes down which
files went into each cart the library asked for (``post_cart`` is wrapped
to note the paths; nothing else changes).

``transfer`` times the same call when every cart it will ask for is already
staged (``--one-cart``: the library is told to ask for the whole event as one
cart, so that it transfers the very cart ``curl | tar`` does): ``run.py``
creates carts of exactly the recorded file sets and waits until they are
ready, and the downloader is given a :class:`CartAPI` whose ``post_cart``
posts nothing and sends every later request about that cart to the ready cart
of the files asked for.  The time covers reading the event, one
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
from typing import Any

import requests
from rss import peak_rss_kib

from pacifica.downloader import CartAPI, CartLimits, Downloader, FileRecord, RetryBudget


class ReadyCartAPI(CartAPI):
    """A CartAPI that posts nothing: each cart the library asks for is answered by the ready cart of its files.

    ``post_cart`` notes which ready cart stands for the URL the library chose; every later request about that
    URL goes to the ready cart instead.
    """

    def __init__(self, cart_api_url: str, ready: dict[frozenset[str], str]) -> None:
        """Serve the carts ``ready`` maps (set of paths -> cart URL) from ``cart_api_url``."""
        super().__init__(cart_api_url)
        self.ready = ready
        self.standing_for: dict[str, str] = {}

    def post_cart(self, cart_url: str, records: list[FileRecord], *, budget: RetryBudget | None = None) -> None:
        """Note the ready cart holding exactly the files asked for; send nothing."""
        asked = frozenset(record.path for record in records)
        ready = self.ready.get(asked)
        if ready is None:
            raise RuntimeError(
                f"the library asked for a cart of {len(asked)} files that the bench did not stage "
                f"(it staged carts of {sorted(len(paths) for paths in self.ready)} files)"
            )
        self.standing_for[cart_url] = ready

    def probe(self, cart_url: str, deadline: float | None = None, budget: RetryBudget | None = None) -> str:
        """Ask about the ready cart standing for ``cart_url``."""
        return super().probe(self.standing_for.get(cart_url, cart_url), deadline=deadline, budget=budget)

    def open_cart(self, cart_url: str, *args: Any, **kwargs: Any) -> requests.Response:
        """Stream the ready cart standing for ``cart_url``."""
        return super().open_cart(self.standing_for.get(cart_url, cart_url), *args, **kwargs)


def record_carts(down: Downloader, carts: list[list[str]]) -> None:
    """Wrap ``down``'s ``post_cart`` so that the paths of each cart it makes are appended to ``carts``."""
    original = down.cart_api.post_cart
    lock = threading.Lock()

    def post_cart(cart_url: str, records: list[FileRecord], *, budget: RetryBudget | None = None) -> None:
        with lock:
            carts.append([record.path for record in records])
        original(cart_url, records, budget=budget)

    down.cart_api.post_cart = post_cart  # type: ignore[method-assign]


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
    return Downloader(None, ReadyCartAPI(args.cart_url, ready), keep_cart=True, **options)


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
    print(
        json.dumps({"seconds": seconds, "files": files, "carts": len(carts) or None, "peak_rss_kib": peak_rss_kib()}),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
