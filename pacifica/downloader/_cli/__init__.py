"""The ``pacifica-downloader`` command: download the files of an event or a transaction.

::

    pacifica-downloader cloudevent EVENT.json -d DIR [--cart-url URL] [--json]
    pacifica-downloader cloudevent - < EVENT.json
    pacifica-downloader transactioninfo DOC.json -d DIR
    pacifica-downloader transactioninfo --transaction-id 42 --policy-url URL -d DIR
    pacifica-downloader enqueue EVENT.json -d DIR     # for the download workers; prints the task id
    pacifica-downloader serve --download-dir DIR      # the download service Notifications POSTs events to
    pacifica-downloader subscribe --notifications-url URL --user ID --target URL   # its event match

Files land in ``DIR/<filename>/<subdir>/<name>`` (``--filename`` defaults to
``data``), each verified against its hash.  Credentials come from the
environment only (:mod:`.credentials`), never from the command line.  The
exit status says what went wrong (:data:`EXIT_CODES`).  Also runnable as
``python -m pacifica.downloader``.

This module runs the command; :mod:`.arguments` parses and checks it,
:mod:`.credentials` reads the environment, :mod:`.output` and
:mod:`.display` say what happens, and :mod:`~pacifica.downloader._policy_service`
fetches a transaction by id.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

import requests
from urllib3.exceptions import InsecureRequestWarning

from .. import __version__
from .._compat import Downloader
from .._events import event_records
from .._exceptions import DownloaderError
from .._manifest import manifest
from .._policy_service import fetch_transaction
from .._redaction import redact
from .._transactions import transaction_records
from .arguments import build_parser, check_arguments, load_json
from .credentials import auth_from_environment
from .display import make_display
from .facility import run_facility_command
from .output import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    Output,
    ProgressFeed,
    exit_code_for,
    restore_logging,
    setup_logging,
    summary,
)

LOGGER = logging.getLogger(__name__)


def _run(args: argparse.Namespace, out: Output, feed: ProgressFeed, stdin: TextIO | None) -> int:
    with warnings.catch_warnings():
        if args.insecure:
            out.message(
                "warning: --insecure: TLS certificates are not verified; anyone on the network path "
                "can read and alter the traffic"
            )
            # Said once above; urllib3 would repeat it for every request.
            warnings.simplefilter("ignore", InsecureRequestWarning)
        if args.command == "enqueue":
            return _enqueue(args, out, stdin)
        if args.command in ("serve", "subscribe"):
            return run_facility_command(args, out)
        return _download(args, out, feed, stdin)


def _enqueue(args: argparse.Namespace, out: Output, stdin: TextIO | None) -> int:
    event = load_json(args.event, stdin)
    try:
        from ..tasks import enqueue
    except ImportError as err:  # celery, the optional extra
        out.message(f"error: enqueue needs Celery ({err}); pip install 'pacifica-downloader[celery]'")
        return EXIT_USAGE
    options: dict[str, Any] = {
        "filename": args.filename,
        "keep_cart": args.keep_cart,
        "overwrite": not args.no_overwrite,
    }
    if args.cart_url:
        options["cart_api_url"] = args.cart_url
    if args.timeout is not None:
        options["timeout"] = args.timeout
    location = os.path.abspath(args.destination)
    result = enqueue(event, location, **options)
    out.line(result.id)
    if not args.quiet:
        out.message(f"queued the download into {os.path.join(location, args.filename)} as task {result.id}")
    return EXIT_OK


def _download(args: argparse.Namespace, out: Output, feed: ProgressFeed, stdin: TextIO | None) -> int:
    auth = auth_from_environment(os.environ, ca_bundle=args.ca_bundle, insecure=args.insecure)
    with requests.Session() as session:
        session.headers["User-Agent"] = f"{PROG}/{__version__} {requests.utils.default_user_agent()}"
        down = Downloader(
            cart_api_url=args.cart_url,
            auth=auth or None,
            session=session,
            keep_cart=args.keep_cart,
            overwrite=not args.no_overwrite,
            progress=feed,
        )
        out.keep(down.cart_api.transport.secrets)
        if args.command == "cloudevent":
            records = event_records(load_json(args.event, stdin))
        elif args.transaction_id is not None:
            document = fetch_transaction(down.cart_api.transport, args.policy_url, args.transaction_id)
            records = transaction_records(document, args.transaction_id)
        else:
            records = transaction_records(load_json(args.document, stdin))
        LOGGER.info("%d files listed; downloading into %s", len(records), os.path.abspath(args.destination))
        started = time.monotonic()
        paths = down.download(records, args.destination, filename=args.filename, timeout=args.timeout)
        elapsed = time.monotonic() - started
    out.close_display()
    entries = manifest(records, paths) if args.json or not args.quiet else None
    if args.json:
        out.json(entries)
    if not args.quiet:
        destination = os.path.abspath(os.path.join(args.destination, args.filename))
        out.message(summary(paths, records, entries, feed, elapsed, destination, args.keep_cart))
    return EXIT_OK


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    stdout, stderr = sys.stdout, sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        check_arguments(parser, args)
    except SystemExit as exit_:  # --help, --version, usage errors
        code = exit_.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
    display = make_display(stderr, quiet=args.quiet)
    out = Output(stdout, stderr, display)
    feed = ProgressFeed(display)
    logging_state = setup_logging(args.verbose, args.quiet, stderr, display)
    try:
        return _run(args, out, feed, None)
    except KeyboardInterrupt:
        out.close_display()
        text = "interrupted; no partial file was left"
        if args.keep_cart and feed.cart_url:
            text += f"; the cart was kept at {redact(feed.cart_url)}"
        stderr.write("{}{}: {}\n".format("\n" if _isatty(stderr) else "", PROG, text))
        stderr.flush()
        return EXIT_INTERRUPTED
    except (DownloaderError, requests.RequestException) as error:
        out.error(error, args.verbose)
        return exit_code_for(error)
    except Exception as error:  # noqa: BLE001 - a bug: say so in one line, the traceback with -vv
        out.error(error, args.verbose)
        if args.verbose < 2:
            stderr.write(f"{PROG}: this is a bug; run again with -vv for the traceback\n")
        return EXIT_INTERNAL
    finally:
        out.close_display()
        restore_logging(logging_state)
