"""The command's arguments: the parser, the checks argparse cannot express, and the JSON files they name."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Any, TextIO
from urllib.parse import urlsplit

from .. import __version__
from .._config import Timeouts
from .._exceptions import InvalidInputError
from .credentials import ENV_CERT, ENV_KEY, ENV_PASSWORD, ENV_TOKEN, ENV_USER
from .facility import add_facility_commands
from .output import EXIT_CODES, PROG


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


def _add_where(command: argparse.ArgumentParser, workers: bool = False) -> None:
    """Where the files go and where from; ``workers``: as the download workers see it (``enqueue``)."""
    where = command.add_argument_group("where")
    where.add_argument(
        "-d",
        "--destination",
        metavar="DIR",
        default=".",
        help=("download directory, as the workers see it" if workers else "download directory")
        + " (default: the current directory); files land in DIR/FILENAME/...",
    )
    where.add_argument(
        "--filename",
        metavar="NAME",
        default="data",
        help="folder inside DIR the files land in, as Cartd names the cart's top folder (default: data)",
    )
    where.add_argument(
        "--cart-url",
        metavar="URL",
        default=None,
        help="Cartd cart API URL (default: "
        + ("the workers' environment)" if workers else "from the environment, see below)"),
    )
    where.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=None,
        help=f"how long to wait for the cart to be ready (default: {Timeouts().wait:.0f})",
    )


def _add_behaviour(command: argparse.ArgumentParser, workers: bool = False) -> None:
    behaviour = command.add_argument_group("behaviour")
    behaviour.add_argument("--keep-cart", action="store_true", help="leave the cart on the server afterwards")
    behaviour.add_argument(
        "--no-overwrite",
        action="store_true",
        help=("fail the task" if workers else "fail (exit 6)")
        + " instead of replacing an existing file whose content differs",
    )


def _add_talk(output: argparse._ArgumentGroup, quiet: str) -> None:
    talk = output.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true", help=quiet)
    talk.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr: -v progress steps, -vv debug details"
    )


def _add_common_options(command: argparse.ArgumentParser) -> None:
    """Add the options every download subcommand takes (added to each: argparse's ``parents`` loses group layout)."""
    _add_where(command)
    tls = command.add_argument_group("TLS (credentials: see environment below)").add_mutually_exclusive_group()
    tls.add_argument("--ca-bundle", metavar="PATH", help="CA certificate file or directory to verify servers with")
    tls.add_argument("--insecure", action="store_true", help="do not verify TLS certificates (prints a warning; avoid)")
    output = command.add_argument_group("output")
    _add_talk(output, "no progress display and no summary; only errors")
    output.add_argument(
        "--json",
        action="store_true",
        help='print the written files as JSON to stdout: [{"path", "size", "hashtype", "hashsum"}, ...]',
    )
    _add_behaviour(command)


def build_parser() -> argparse.ArgumentParser:
    """Return the command's argument parser."""
    epilog = _epilog()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_wrap(
            "Download the files of a Pacifica event or transaction through a Cartd cart, verifying "
            "every file against its hash. Files land in DIR/FILENAME/<subdir>/<name>."
        )
        + "\n\nexamples:\n"
        "  pacifica-downloader cloudevent event.json -d /data/in --cart-url http://cart:8081\n"
        "  pacifica-downloader cloudevent - --json < event.json > manifest.json\n"
        "  pacifica-downloader transactioninfo --transaction-id 42 --policy-url http://policy:8181",
        epilog=epilog,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    event = commands.add_parser(
        "cloudevent",
        epilog=epilog,
        formatter_class=formatter,
        help="download the files of a Pacifica Notifications CloudEvent (JSON)",
        description=_wrap("Download the files of a Pacifica Notifications CloudEvent into DIR/FILENAME/."),
    )
    event.add_argument("event", metavar="EVENT.json", help="the event as a JSON file; - reads standard input")
    _add_common_options(event)
    event.set_defaults(command_parser=event)
    transaction = commands.add_parser(
        "transactioninfo",
        epilog=epilog,
        formatter_class=formatter,
        help="download the files of a Pacifica Policy transaction-info document",
        description=_wrap(
            "Download the files of a Pacifica Policy transaction-info document into DIR/FILENAME/, "
            "the document given as a file or fetched from the Policy service "
            "(GET POLICY_URL/status/transactions/by_id/ID, with the same credentials and TLS settings). "
            "An unknown transaction is an error (exit 3), never an empty download."
        ),
    )
    transaction.add_argument(
        "document", metavar="DOC.json", nargs="?", help="the document as a JSON file; - reads standard input"
    )
    fetch = transaction.add_argument_group("fetching the document instead")
    fetch.add_argument("--transaction-id", metavar="ID", type=_transaction_id, help="the transaction to fetch")
    fetch.add_argument(
        "--policy-url",
        metavar="URL",
        help="the Policy service's root URL, or pacifica-cli's download_policy_url (ending in "
        "/status/transactions/by_id)",
    )
    _add_common_options(transaction)
    transaction.set_defaults(command_parser=transaction)
    _add_enqueue(commands, epilog, formatter)
    add_facility_commands(commands, epilog, formatter, _add_talk, _positive_float)
    return parser


def _add_enqueue(commands: Any, epilog: str, formatter: type[argparse.HelpFormatter]) -> None:
    enqueue = commands.add_parser(
        "enqueue",
        epilog=epilog,
        formatter_class=formatter,
        help="queue the download of a CloudEvent for the download workers; print the task id",
        description=_wrap(
            "Queue the download of a Pacifica Notifications CloudEvent for the download workers "
            "(celery -A pacifica.downloader.tasks worker; needs the 'celery' extra) and print the task's id. "
            "The broker is BROKER_URL (default: a Redis on 127.0.0.1:6379). The workers download into "
            "DIR/FILENAME/ as they see DIR, with their own credentials and, unless --cart-url is given, "
            "their own Cartd."
        ),
    )
    enqueue.add_argument("event", metavar="EVENT.json", help="the event as a JSON file; - reads standard input")
    _add_where(enqueue, workers=True)
    _add_behaviour(enqueue, workers=True)
    _add_talk(enqueue.add_argument_group("output"), "print only the task id, and errors")
    enqueue.set_defaults(command_parser=enqueue, insecure=False, ca_bundle=None, json=False)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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
    for option in ("cart_url", "policy_url", "notifications_url", "target"):
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
