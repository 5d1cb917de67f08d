"""The ``pacifica-downloader`` command: download the files of an event or a transaction.

::

    pacifica-downloader cloudevent EVENT.json -d DIR [--cart-url URL] [--json]
    pacifica-downloader cloudevent - < EVENT.json
    pacifica-downloader transactioninfo DOC.json -d DIR
    pacifica-downloader transactioninfo --transaction-id 42 --policy-url URL -d DIR

Files land in ``DIR/<filename>/<subdir>/<name>`` (``--filename`` defaults to
``data``), each verified against its hash.  Credentials come from the
environment only (see :data:`ENV_USER` and the others), never from the
command line.  The exit status says what went wrong (:data:`EXIT_CODES`).
Also runnable as ``python -m pacifica.downloader``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import InsecureRequestWarning

from . import __version__
from .cartapi import summarize
from .cloudevent import event_records
from .config import Timeouts
from .display import SafeDisplay, format_size, make_display
from .downloader import Downloader
from .exceptions import (
    CartError,
    CartFailedError,
    CartTimeoutError,
    DestinationError,
    DownloaderError,
    IntegrityError,
    InvalidInputError,
    PolicyError,
    TransferError,
    UnsafeArchiveError,
)
from .policy import transaction_records
from .progress import Progress
from .records import FileRecord
from .transport import Transport, redact

__all__ = [
    "EXIT_CODES",
    "auth_from_environment",
    "build_parser",
    "exit_code_for",
    "fetch_transaction",
    "load_json",
    "main",
    "manifest",
]

PROG = "pacifica-downloader"
LOGGER = logging.getLogger(__name__)
#: The logger the command configures (``-v``/``-vv``); nothing else is touched.
LIBRARY_LOGGER = "pacifica.downloader"

# -- exit codes -------------------------------------------------------------------

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_SERVER = 3
EXIT_INTEGRITY = 4
EXIT_TIMEOUT = 5
EXIT_DESTINATION = 6
EXIT_INTERRUPTED = 130

#: Every exit status of the command and what it means (also shown by ``--help``).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success: every file is on disk and verified",
    EXIT_INTERNAL: "unexpected internal error (a bug: please report it with the -vv output)",
    EXIT_USAGE: "bad input or usage: invalid arguments, an unreadable or invalid JSON file, "
    "an event or document that cannot be downloaded",
    EXIT_SERVER: "server, cart or transfer error: the cart or policy service refused or failed, "
    "or the network gave out",
    EXIT_INTEGRITY: "integrity error: a file did not match its hash, the cart held other files "
    "than requested, or the archive was unsafe",
    EXIT_TIMEOUT: "timeout: the cart was not ready in time (see --timeout)",
    EXIT_DESTINATION: "destination error: the download directory cannot take the files "
    "(permissions, disk full, a differing file with --no-overwrite)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C): the cart is deleted (unless --keep-cart) and no partial "
    "file is left",
}

# -- environment --------------------------------------------------------------------

ENV_USER = "PACIFICA_DOWNLOADER_USER"
ENV_PASSWORD = "PACIFICA_DOWNLOADER_PASSWORD"
ENV_TOKEN = "PACIFICA_DOWNLOADER_TOKEN"
ENV_CERT = "PACIFICA_DOWNLOADER_CERT"
ENV_KEY = "PACIFICA_DOWNLOADER_KEY"

#: Error messages list at most this many detail lines unless ``-v`` is given.
DETAIL_LINES = 10


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=79)


def _epilog() -> str:
    codes = "\n".join(
        textwrap.fill(text, width=79, initial_indent=f"  {code:>3}  ", subsequent_indent=" " * 7)
        for code, text in sorted(EXIT_CODES.items())
    )
    return (
        f"exit status:\n{codes}\n\n"
        "environment:\n"
        f"  {ENV_USER}, {ENV_PASSWORD}\n"
        "        HTTP basic authentication\n"
        f"  {ENV_TOKEN}\n"
        "        bearer token (Authorization: Bearer ...)\n"
        f"  {ENV_CERT} [, {ENV_KEY}]\n"
        "        client certificate file [and its private key file]\n"
        "  CARTD_CART_API_URL, or CARTD_PROTO, CARTD_ADDR, CARTD_PORT\n"
        "        the cart service when --cart-url is not given\n"
        "        (default: http://127.0.0.1:8081)\n"
        "Credentials are read from the environment only, never from the command line."
    )


# -- argument parsing ------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _transaction_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a transaction id (an integer)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a transaction id is not negative, got {text!r}")
    return value


def _add_common_options(command: argparse.ArgumentParser) -> None:
    """Add the options every subcommand takes (added to each: argparse's ``parents`` loses group layout)."""
    where = command.add_argument_group("where")
    where.add_argument(
        "-d", "--destination", metavar="DIR", default=".",
        help="download directory (default: the current directory); files land in DIR/FILENAME/...",
    )
    where.add_argument(
        "--filename", metavar="NAME", default="data",
        help="folder inside DIR the files land in, as Cartd names the cart's top folder (default: data)",
    )
    where.add_argument(
        "--cart-url", metavar="URL", default=None,
        help="Cartd cart API URL (default: from the environment, see below)",
    )
    where.add_argument(
        "--timeout", metavar="SECONDS", type=_positive_float, default=None,
        help=f"how long to wait for the cart to be ready (default: {Timeouts().wait:.0f})",
    )
    tls = command.add_argument_group("TLS (credentials: see environment below)").add_mutually_exclusive_group()
    tls.add_argument("--ca-bundle", metavar="PATH", help="CA certificate file or directory to verify servers with")
    tls.add_argument(
        "--insecure", action="store_true", help="do not verify TLS certificates (prints a warning; avoid)"
    )
    output = command.add_argument_group("output")
    talk = output.add_mutually_exclusive_group()
    talk.add_argument(
        "-q", "--quiet", action="store_true", help="no progress display and no summary; only errors"
    )
    talk.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr: -v progress steps, -vv debug details"
    )
    output.add_argument(
        "--json", action="store_true",
        help='print the written files as JSON to stdout: [{"path", "size", "hashtype", "hashsum"}, ...]',
    )
    behaviour = command.add_argument_group("behaviour")
    behaviour.add_argument("--keep-cart", action="store_true", help="leave the cart on the server afterwards")
    behaviour.add_argument(
        "--no-overwrite", action="store_true",
        help="fail (exit 6) instead of replacing an existing file whose content differs",
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the command's argument parser."""
    epilog = _epilog()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_wrap(
            "Download the files of a Pacifica event or transaction through a Cartd cart, verifying "
            "every file against its hash. Files land in DIR/FILENAME/<subdir>/<name>."
        ) + "\n\nexamples:\n"
        "  pacifica-downloader cloudevent event.json -d /data/in --cart-url http://cart:8081\n"
        "  pacifica-downloader cloudevent - --json < event.json > manifest.json\n"
        "  pacifica-downloader transactioninfo --transaction-id 42 --policy-url http://policy:8181",
        epilog=epilog,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    event = commands.add_parser(
        "cloudevent", epilog=epilog, formatter_class=formatter,
        help="download the files of a Pacifica Notifications CloudEvent (JSON)",
        description=_wrap("Download the files of a Pacifica Notifications CloudEvent into DIR/FILENAME/."),
    )
    event.add_argument("event", metavar="EVENT.json", help="the event as a JSON file; - reads standard input")
    _add_common_options(event)
    event.set_defaults(command_parser=event)
    transaction = commands.add_parser(
        "transactioninfo", epilog=epilog, formatter_class=formatter,
        help="download the files of a Pacifica Policy transaction-info document",
        description=_wrap(
            "Download the files of a Pacifica Policy transaction-info document into DIR/FILENAME/, "
            "the document given as a file or fetched from the Policy service "
            "(GET POLICY_URL/transactioninfo/ID, with the same credentials and TLS settings)."
        ),
    )
    transaction.add_argument(
        "document", metavar="DOC.json", nargs="?", help="the document as a JSON file; - reads standard input"
    )
    fetch = transaction.add_argument_group("fetching the document instead")
    fetch.add_argument("--transaction-id", metavar="ID", type=_transaction_id, help="the transaction to fetch")
    fetch.add_argument("--policy-url", metavar="URL", help="the Policy service's base URL")
    _add_common_options(transaction)
    transaction.set_defaults(command_parser=transaction)
    return parser


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks argparse cannot express; a failure exits through ``parser.error`` (status 2)."""
    parser = getattr(args, "command_parser", parser)
    if args.command == "transactioninfo":
        if args.document is not None and args.transaction_id is not None:
            parser.error("give either DOC.json or --transaction-id, not both")
        if args.document is None and args.transaction_id is None:
            parser.error("give DOC.json, or --transaction-id with --policy-url")
        if args.transaction_id is not None and not args.policy_url:
            parser.error("--transaction-id needs --policy-url")
        if args.policy_url and args.transaction_id is None:
            parser.error("--policy-url is only used with --transaction-id")
    for option in ("cart_url", "policy_url"):
        url = getattr(args, option, None)
        if not url:
            continue
        flag = "--" + option.replace("_", "-")
        if not url.startswith(("http://", "https://")):
            parser.error(f"{flag} must start with http:// or https://")
        try:
            parts = urlsplit(url)
            has_credentials = parts.username is not None or parts.password is not None
        except ValueError as err:
            parser.error(f"{flag} is not a valid URL: {err}")
        if has_credentials:
            parser.error(
                f"{flag} must not carry credentials (they would show in the process list); "
                f"set {ENV_USER} and {ENV_PASSWORD} in the environment instead"
            )


# -- pieces, each testable on its own ---------------------------------------------------------


def auth_from_environment(
    environ: Mapping[str, str], *, ca_bundle: str | None = None, insecure: bool = False
) -> dict[str, Any]:
    """Return the requests arguments for the credentials in ``environ`` and the TLS options.

    The result is the ``auth`` dict :class:`Downloader` takes (``auth``,
    ``headers``, ``cert``, ``verify``); empty when nothing is set.  Raises
    :class:`InvalidInputError` for an incomplete or contradictory setting or
    a file that does not exist.  Empty variables count as unset.

    >>> auth_from_environment({"PACIFICA_DOWNLOADER_TOKEN": "t0k"})
    {'headers': {'Authorization': 'Bearer t0k'}}
    """
    def get(name: str) -> str | None:
        return environ.get(name) or None

    user, password, token = get(ENV_USER), get(ENV_PASSWORD), get(ENV_TOKEN)
    cert, key = get(ENV_CERT), get(ENV_KEY)
    result: dict[str, Any] = {}
    if (user is None) != (password is None):
        missing = ENV_PASSWORD if password is None else ENV_USER
        present = ENV_USER if password is None else ENV_PASSWORD
        raise InvalidInputError(f"{present} is set but {missing} is not; set both for basic authentication")
    if user is not None and token is not None:
        raise InvalidInputError(
            f"set either {ENV_USER}/{ENV_PASSWORD} (basic) or {ENV_TOKEN} (bearer), not both"
        )
    if user is not None:
        result["auth"] = (user, password)
    if token is not None:
        result["headers"] = {"Authorization": f"Bearer {token}"}
    if key is not None and cert is None:
        raise InvalidInputError(f"{ENV_KEY} is set but {ENV_CERT} is not")
    if cert is not None:
        for name, path in ((ENV_CERT, cert), (ENV_KEY, key)):
            if path is not None and not os.path.isfile(path):
                raise InvalidInputError(f"{name} names no file: {path}")
        result["cert"] = cert if key is None else (cert, key)
    if ca_bundle is not None and insecure:
        raise InvalidInputError("--ca-bundle and --insecure contradict each other")
    if ca_bundle is not None:
        if not os.path.exists(ca_bundle):
            raise InvalidInputError(f"--ca-bundle names no file or directory: {ca_bundle}")
        result["verify"] = ca_bundle
    elif insecure:
        result["verify"] = False
    return result


def load_json(path: str, stdin: TextIO | None = None) -> Any:
    """Read and parse the JSON file ``path`` (``-`` is ``stdin``); raise :class:`InvalidInputError` if that fails."""
    name = "standard input" if path == "-" else path
    try:
        if path == "-":
            source = stdin if stdin is not None else sys.stdin
            raw: Any = source.buffer.read() if hasattr(source, "buffer") else source.read()
        else:
            with open(path, "rb") as handle:
                raw = handle.read()
    except OSError as err:
        raise InvalidInputError(f"cannot read {name}: {err.strerror or err}") from None
    try:
        return json.loads(raw)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidInputError(f"{name} is not valid JSON: {err}") from None


def fetch_transaction(transport: Transport, policy_url: str, transaction_id: int) -> Any:
    """GET ``{policy_url}/transactioninfo/{transaction_id}`` through ``transport``; return the document.

    ``transport`` carries the session, credentials, TLS settings, timeouts and
    retry policy of the download.  Raises :class:`PolicyError` when the
    service cannot be reached or does not answer a JSON document.
    """
    url = "{}/transactioninfo/{}".format(policy_url.rstrip("/"), transaction_id)
    try:
        response = transport.request("GET", url, headers={"Accept": "application/json"})
    except TransferError as err:
        raise PolicyError(
            "could not fetch transaction {} from the policy service ({}); check that it is up and reachable".format(
                transaction_id, "; ".join(err.attempts) or err.message
            )
        ) from err
    with response:
        if response.status_code == 404:
            raise PolicyError(
                f"the policy service knows no transaction {transaction_id} (HTTP 404 from {redact(url)})",
                response=response,
            )
        if response.status_code != 200:
            raise PolicyError(
                f"the policy service answered HTTP {response.status_code} for transaction {transaction_id}: "
                f"{summarize(response.text)}",
                response=response,
            )
        try:
            document = response.json()
        except ValueError:
            raise PolicyError(
                f"the policy service's answer for transaction {transaction_id} is not JSON: "
                f"{summarize(response.text[:500])}",
                response=response,
            ) from None
    LOGGER.info("fetched transaction %d from %s", transaction_id, redact(url))
    return document


def manifest(records: Sequence[FileRecord], paths: Sequence[str]) -> list[dict[str, Any]]:
    """Return the ``--json`` manifest: one ``{"path", "size", "hashtype", "hashsum"}`` per file, in input order."""
    entries = []
    for record, path in zip(records, paths):
        entries.append(
            {
                "path": os.path.abspath(path),
                "size": os.stat(path).st_size,
                "hashtype": record.hashtype,
                "hashsum": record.hashsum,
            }
        )
    return entries


def exit_code_for(error: BaseException) -> int:
    """Return the exit status documented for ``error`` (see :data:`EXIT_CODES`)."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, InvalidInputError):
        return EXIT_USAGE
    if isinstance(error, CartTimeoutError):
        return EXIT_TIMEOUT
    if isinstance(error, (IntegrityError, UnsafeArchiveError)):
        return EXIT_INTEGRITY
    if isinstance(error, DestinationError):
        return EXIT_DESTINATION
    if isinstance(error, (CartError, TransferError, DownloaderError, requests.RequestException)):
        return EXIT_SERVER
    return EXIT_INTERNAL


# -- output ---------------------------------------------------------------------


class _LevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.levelname_lower = record.levelname.lower()
        return super().format(record)


class _DisplayHandler(logging.Handler):
    """Writes log records to stderr, through the progress display when one is drawing."""

    def __init__(self, stream: TextIO, display: SafeDisplay | None) -> None:
        super().__init__()
        self.stream = stream
        self.display = display

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if self.display is None or not self.display.write(text):
                self.stream.write(text + "\n")
                self.stream.flush()
        except Exception:  # noqa: BLE001 - logging.Handler's contract: report, never raise
            self.handleError(record)


class _Tracker:
    """The progress callback: remembers the last report and passes it on to the display."""

    def __init__(self, display: SafeDisplay | None) -> None:
        self.display = display
        self.last: Progress | None = None
        self.cart_url: str | None = None

    def __call__(self, progress: Progress) -> None:
        self.last = progress
        if progress.cart_url:
            self.cart_url = progress.cart_url
        if self.display is not None:
            self.display(progress)


class _Output:
    """Everything the command prints besides logs, in one place."""

    def __init__(self, stdout: TextIO, stderr: TextIO, display: SafeDisplay | None) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.display = display

    def close_display(self) -> None:
        if self.display is not None:
            self.display.close()

    def message(self, text: str) -> None:
        self.close_display()
        self.stderr.write(f"{PROG}: {text}\n")
        self.stderr.flush()

    def error(self, error: BaseException, verbose: int) -> None:
        self.close_display()
        if verbose >= 2:
            traceback.print_exception(type(error), error, error.__traceback__, file=self.stderr)
        text = str(error) if str(error) else type(error).__name__
        if not isinstance(error, DownloaderError):
            text = f"{type(error).__name__}: {text}"
        lines = text.splitlines() or [text]
        if isinstance(error, CartFailedError) and verbose >= 1 and error.server_message:
            lines.append("  server message: " + error.server_message)
        detail = lines[1:]
        if verbose < 1 and len(detail) > DETAIL_LINES:
            more = len(detail) - DETAIL_LINES
            detail = detail[:DETAIL_LINES] + [f"  ... and {more} more (-v shows all)"]
        self.stderr.write(f"{PROG}: error: {lines[0]}\n")
        for line in detail:
            self.stderr.write(line + "\n")
        self.stderr.flush()

    def json(self, data: Any) -> None:
        try:
            json.dump(data, self.stdout, indent=2)
            self.stdout.write("\n")
            self.stdout.flush()
        except BrokenPipeError:
            # The reader went away (``| head``); the files are on disk all the same.
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass


def _setup_logging(verbose: int, quiet: bool, stream: TextIO, display: SafeDisplay | None) -> Any:
    """Send the library's log records to ``stream``; return what :func:`_restore_logging` needs."""
    logger = logging.getLogger(LIBRARY_LOGGER)
    saved = (logger.level, logger.propagate)
    if quiet:
        level = logging.ERROR
    elif verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = logging.INFO
    else:
        level = logging.WARNING
    handler = _DisplayHandler(stream, display)
    if verbose >= 2:
        fmt = f"{PROG}: %(asctime)s %(levelname_lower)s %(name)s: %(message)s"
    else:
        fmt = f"{PROG}: %(levelname_lower)s: %(message)s"
    handler.setFormatter(_LevelFormatter(fmt))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger, handler, saved


def _restore_logging(state: Any) -> None:
    logger, handler, (level, propagate) = state
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


def _summary(
    paths: Sequence[str], records: Sequence[FileRecord], entries: list[dict[str, Any]] | None,
    tracker: _Tracker, elapsed: float, destination: str, keep_cart: bool,
) -> str:
    if not records:
        return "the input lists no files; nothing to download"
    sizes = [entry["size"] for entry in entries] if entries is not None else [os.stat(path).st_size for path in paths]
    fetched = tracker.last.files_total if tracker.last is not None else 0
    text = "{} file{} ({}) in {:.1f} s to {}".format(
        len(paths), "" if len(paths) == 1 else "s", format_size(sum(sizes)), elapsed, destination
    )
    present = len(paths) - fetched
    if present:
        text += " ({} already present{})".format(present, "" if fetched else ", no cart needed")
    if keep_cart and tracker.cart_url:
        text += f"; cart kept at {redact(tracker.cart_url)}"
    return text


# -- the command -------------------------------------------------------------------


def _run(args: argparse.Namespace, out: _Output, tracker: _Tracker, stdin: TextIO | None) -> int:
    with warnings.catch_warnings():
        if args.insecure:
            out.message("warning: --insecure: TLS certificates are not verified; anyone on the network path "
                        "can read and alter the traffic")
            # Said once above; urllib3 would repeat it for every request.
            warnings.simplefilter("ignore", InsecureRequestWarning)
        return _download(args, out, tracker, stdin)


def _download(args: argparse.Namespace, out: _Output, tracker: _Tracker, stdin: TextIO | None) -> int:
    auth = auth_from_environment(os.environ, ca_bundle=args.ca_bundle, insecure=args.insecure)
    with requests.Session() as session:
        session.headers["User-Agent"] = f"{PROG}/{__version__} {requests.utils.default_user_agent()}"
        down = Downloader(
            cart_api_url=args.cart_url,
            auth=auth or None,
            session=session,
            keep_cart=args.keep_cart,
            overwrite=not args.no_overwrite,
            progress=tracker,
        )
        if args.command == "cloudevent":
            records = event_records(load_json(args.event, stdin))
        elif args.transaction_id is not None:
            document = fetch_transaction(down.cart_api.transport, args.policy_url, args.transaction_id)
            records = transaction_records(document)
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
        out.message(_summary(paths, records, entries, tracker, elapsed, destination, args.keep_cart))
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
        _check_arguments(parser, args)
    except SystemExit as exit_:  # --help, --version, usage errors
        code = exit_.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
    display = make_display(stderr, quiet=args.quiet)
    out = _Output(stdout, stderr, display)
    tracker = _Tracker(display)
    logging_state = _setup_logging(args.verbose, args.quiet, stderr, display)
    try:
        return _run(args, out, tracker, None)
    except KeyboardInterrupt:
        out.close_display()
        text = "interrupted; no partial file was left"
        if args.keep_cart and tracker.cart_url:
            text += f"; the cart was kept at {redact(tracker.cart_url)}"
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
        _restore_logging(logging_state)
