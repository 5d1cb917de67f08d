"""One timed download with the last release (pacifica-downloader 0.4.1), run in its own virtualenv.

::

    python client_release.py e2e      --cart-url URL --event EVENT.json --dest DIR
    python client_release.py transfer --cart-url URL --event EVENT.json --dest DIR --ready-cart CART_URL

``e2e`` times ``Downloader(cart_api_url=URL).cloudevent(dest, event,
timeout=...)``, the release's documented call, with its cart timeout raised
(its default of 120 polls a second apart is too short for 2000 files).  The
release never deletes its cart, so the cart's URL is recorded (by wrapping
``setup_cart``) and printed for ``run.py`` to delete.  ``transfer`` times the
release's own fetch-and-extract step, ``Downloader._download_from_url``, on
a cart that is already ready; 0.4.1 is frozen, so using its internal method
is safe.  Output: one JSON line, ``{"seconds": ..., "cart_url": ..., "peak_rss_kib": ...}``
(the last is this process's VmHWM, see ``rss.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

from rss import peak_rss_kib

from pacifica.downloader import Downloader

#: The cart timeout given to the release, in its units (polls about a second apart).
RELEASE_TIMEOUT = 3600


def record_carts(down: Any, created: list[str]) -> None:
    """Wrap the release's ``setup_cart`` so the URL of each cart it makes lands in ``created``."""
    original: Callable[[Any], str] = down.cart_api.setup_cart

    def setup_cart(yield_files: Any) -> str:
        cart_url = original(yield_files)
        created.append(cart_url)
        return cart_url

    down.cart_api.setup_cart = setup_cart


def main(argv: list[str]) -> int:
    """Run one timed download; print its JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("e2e", "transfer"))
    parser.add_argument("--cart-url", required=True)
    parser.add_argument("--event", required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--ready-cart")
    args = parser.parse_args(argv)
    with open(args.event) as handle:
        event = json.load(handle)
    down = Downloader(cart_api_url=args.cart_url)
    created: list[str] = []
    record_carts(down, created)
    started = time.perf_counter()
    try:
        if args.mode == "transfer":
            if not args.ready_cart:
                parser.error("transfer needs --ready-cart")
            down._download_from_url(args.dest, args.ready_cart, "data")
        else:
            down.cloudevent(args.dest, event, timeout=RELEASE_TIMEOUT)
    finally:
        seconds = time.perf_counter() - started
        print(
            json.dumps(
                {"seconds": seconds, "cart_url": created[0] if created else None, "peak_rss_kib": peak_rss_kib()}
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
