"""The facility's commands: ``serve`` (the download service Notifications feeds) and ``subscribe`` (its event match).

::

    DOWNLOADER_SERVE_TOKEN=... BROKER_URL=redis://broker:6379/0 \\
        pacifica-downloader serve --download-dir /srv/incoming [--host 127.0.0.1] [--port 8090]
    DOWNLOADER_SERVE_TOKEN=... pacifica-downloader subscribe --notifications-url http://notify:8070 \\
        --user svc-downloads --target http://downloads.site:8090/

See :mod:`pacifica.downloader._serve` and :mod:`pacifica.downloader._subscribe`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import textwrap
import threading
from pathlib import Path
from typing import Any

import requests

from .. import __version__
from .._bearer import ENV_TOKEN, ENV_TOKEN_FILE, token_from_environment
from .._journal import EventJournal
from .._redaction import redact
from .._serve import DEFAULT_PORT, QUEUE_EVERY, DownloadService, EventServer
from .._subscribe import DEFAULT_JSONPATH, subscribe
from .._transport import Transport
from .credentials import auth_from_environment
from .output import EXIT_OK, EXIT_USAGE, PROG, Output

LOGGER = logging.getLogger(__name__)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 0 and 65535, got {text!r}")
    return value


def add_facility_commands(
    commands: Any, epilog: str, formatter: type[argparse.HelpFormatter], add_talk: Any, positive_float: Any
) -> None:
    """Add ``serve`` and ``subscribe`` to the command's subparsers."""
    token_help = (
        f"The token comes from {ENV_TOKEN}, or the first line of the file named by {ENV_TOKEN_FILE}; "
        "never from the command line."
    )
    serve = commands.add_parser(
        "serve",
        epilog=epilog,
        formatter_class=formatter,
        help="receive Notifications' events and queue their downloads for the download workers",
        description=textwrap.fill(
            "Receive the CloudEvents Notifications POSTs, record each one durably in DIR's hidden folder before "
            "answering, and queue its download for the download workers (celery -A pacifica.downloader.tasks "
            "worker; needs the 'celery' extra; broker from BROKER_URL) whenever the broker can be reached. The "
            "files of event E land in DIR/E/. An event that cannot be downloaded is recorded as rejected and "
            "answered 200, so that Notifications keeps the subscription. GET /status/<event id>, GET /health. "
            "With a token set, a POST without 'Authorization: Bearer <token>' is refused (401). " + token_help,
            width=79,
        ),
    )
    serve.add_argument(
        "--download-dir", metavar="DIR", required=True, help="the download area, as the download workers see it"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    serve.add_argument(
        "--cart-url",
        metavar="URL",
        default=None,
        help="Cartd cart API URL for the downloads (default: the workers' environment)",
    )
    serve.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=positive_float,
        default=None,
        help="how long the workers wait for a cart (default: theirs)",
    )
    add_talk(serve.add_argument_group("output"), "log only errors")
    serve.set_defaults(command_parser=serve, verbose=1, insecure=False, ca_bundle=None)

    sub = commands.add_parser(
        "subscribe",
        epilog=epilog,
        formatter_class=formatter,
        help="create the Notifications event match that POSTs events to the download service; print its uuid",
        description=textwrap.fill(
            "Make sure USER has one enabled Notifications event match POSTing the events that match EXPR to "
            "TARGET (the download service's URL), with the service's bearer token as the match's auth when one "
            "is set; print the match's uuid. An enabled match for TARGET is kept, a disabled one is replaced. "
            + token_help,
            width=79,
        ),
    )
    sub.add_argument("--notifications-url", metavar="URL", required=True, help="the Notifications service's URL")
    sub.add_argument(
        "--user",
        metavar="NETWORK_ID",
        required=True,
        help="the user the match belongs to (Policy must let them see the events)",
    )
    sub.add_argument("--target", metavar="URL", required=True, help="the download service's URL")
    sub.add_argument(
        "--jsonpath",
        metavar="EXPR",
        default=DEFAULT_JSONPATH,
        help=f"the events to send (default: every ingest: {DEFAULT_JSONPATH})",
    )
    tls = sub.add_argument_group("TLS").add_mutually_exclusive_group()
    tls.add_argument("--ca-bundle", metavar="PATH", help="CA certificate file or directory to verify servers with")
    tls.add_argument("--insecure", action="store_true", help="do not verify TLS certificates (prints a warning)")
    add_talk(sub.add_argument_group("output"), "print only the uuid, and errors")
    sub.set_defaults(command_parser=sub)


def run_facility_command(args: argparse.Namespace, out: Output) -> int:
    """Run ``serve`` or ``subscribe``."""
    if args.command == "subscribe":
        return _subscribe(args, out)
    return _serve(args, out)


def _subscribe(args: argparse.Namespace, out: Output) -> int:
    token = token_from_environment()
    auth = auth_from_environment(os.environ, ca_bundle=args.ca_bundle, insecure=args.insecure)
    with requests.Session() as session:
        session.headers["User-Agent"] = f"{PROG}/{__version__} {requests.utils.default_user_agent()}"
        uuid = subscribe(
            Transport(session, auth or None), args.notifications_url, args.user, args.target, args.jsonpath, token
        )
    out.line(uuid)
    if not args.quiet:
        out.message(
            f"event match {uuid} sends {args.user}'s matching events to {redact(args.target)}"
            + ("" if token else f" (no {ENV_TOKEN}: without a token)")
        )
    return EXIT_OK


def _serve(args: argparse.Namespace, out: Output) -> int:
    token = token_from_environment()
    try:
        from .._serve import celery_hooks

        send, report, probe = celery_hooks(Path(args.download_dir).resolve(), _task_options(args))
    except ImportError as err:  # celery, the optional extra
        out.message(f"error: serve needs Celery ({err}); pip install 'pacifica-downloader[celery]'")
        return EXIT_USAGE
    location = Path(args.download_dir).resolve()
    location.mkdir(parents=True, exist_ok=True)
    journal = EventJournal(location)
    journal.hold()
    try:
        service = DownloadService(journal, send, report, probe)
        try:
            server = EventServer((args.host, args.port), service, token)
        except OSError as err:
            out.message(f"error: cannot listen on {args.host}:{args.port}: {err.strerror or err}")
            return EXIT_USAGE
        try:
            return _run_until_stopped(server, service, args, out)
        finally:
            server.server_close()
    finally:
        journal.release()


def _task_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.cart_url:
        options["cart_api_url"] = args.cart_url
    if args.timeout is not None:
        options["timeout"] = args.timeout
    return options


def _run_until_stopped(server: EventServer, service: DownloadService, args: argparse.Namespace, out: Output) -> int:
    stop = threading.Event()
    loop = threading.Thread(target=service.queue_loop, args=(stop, QUEUE_EVERY), name="queue-events", daemon=True)

    def request_stop(signum: int, _frame: object) -> None:
        LOGGER.info("signal %d: stopping", signum)
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()  # shutdown() waits for serve_forever

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        loop.start()
        host, port = args.host, server.server_port
        broker = redact(os.environ.get("BROKER_URL") or "redis://127.0.0.1:6379/0")
        if not server.token:
            LOGGER.warning(
                "no %s or %s: anyone who can reach this service can queue downloads", ENV_TOKEN, ENV_TOKEN_FILE
            )
        if not args.quiet:
            out.message(
                f"serving on http://{host}:{port}/: events recorded in {service.journal.root}, "
                f"downloads queued through {broker} into {service.journal.location}"
            )
        server.serve_forever(poll_interval=0.5)
    finally:
        stop.set()
        service.wake.set()
        loop.join(timeout=30)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return EXIT_OK
