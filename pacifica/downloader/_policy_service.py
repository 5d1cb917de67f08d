"""The Policy service's side of a download: fetching a transaction-info document by its id.

:func:`fetch_transaction` goes through the download's :class:`Transport`,
so the document is fetched with the same session, credentials, TLS settings,
timeouts and retries as the cart; :mod:`.policy` turns it into file records.
The document is Policy's ``GET /status/transactions/by_id/<id>``
(:func:`transaction_url`), the one pacifica-cli's ``download_policy_url``
names; an error document (Policy answers an unknown transaction with HTTP 200
and Metadata's 404 document) raises :class:`PolicyError` here, before any cart.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ._bodies import read_body
from ._exceptions import PolicyError, TransferError
from ._redaction import quote_known, redact
from ._transactions import document_error
from ._transport import Transport

LOGGER = logging.getLogger(__name__)

#: The largest transaction document read (bytes, decompressed): some 60,000 files' records. The only answer
#: read beyond an error page's 64 KiB, because the download needs it whole.
DOCUMENT_LIMIT = 32 * 1024 * 1024
#: Where the Policy service serves a transaction's document, below its root: ``{root}/status/transactions/by_id/<id>``.
TRANSACTION_PATH = "/status/transactions/by_id"


def transaction_url(policy_url: str, transaction_id: int) -> str:
    """The URL of transaction ``transaction_id``'s document, given Policy's root or its ``.../by_id`` URL.

    >>> transaction_url("http://policy:8181/", 42)
    'http://policy:8181/status/transactions/by_id/42'
    >>> transaction_url("https://site.org/policy/status/transactions/by_id", 42)   # pacifica-cli's setting
    'https://site.org/policy/status/transactions/by_id/42'
    """
    base = policy_url.rstrip("/")
    if not base.endswith(TRANSACTION_PATH):
        base += TRANSACTION_PATH
    return f"{base}/{transaction_id}"


def fetch_transaction(transport: Transport, policy_url: str, transaction_id: int) -> Any:
    """GET transaction ``transaction_id``'s document (:func:`transaction_url`) through ``transport``; return it.

    ``transport`` carries the session, credentials, TLS settings, timeouts and
    retry policy of the download.  Raises :class:`PolicyError` when the
    service cannot be reached, does not answer a JSON document, or answers
    an error document (an unknown transaction).
    """
    url = transaction_url(policy_url, transaction_id)
    try:
        response = transport.request("GET", url, headers={"Accept": "application/json"}, stream=True)
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
                f"{quote_known(response.text)}",
                response=response,
            )
        data, whole = read_body(response, DOCUMENT_LIMIT)
        if not whole:
            raise PolicyError(
                f"the policy service's answer for transaction {transaction_id} could not be read whole (larger "
                f"than {DOCUMENT_LIMIT // 2**20} MiB, broken off, or compressed in an encoding not read)",
                response=response,
            )
        try:
            document, parsed = json.loads(data), True
        except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
            document, parsed = None, False
        if not parsed:  # raised here, without the parser's error, which holds the whole answer
            raise PolicyError(
                f"the policy service's answer for transaction {transaction_id} is not JSON: "
                f"{quote_known(data[:500].decode('utf-8', 'replace'))}",
                response=response,
            )
    if isinstance(document, dict):
        said = document_error(document)
        if said is not None:
            raise PolicyError(
                f"the policy service gave no files for transaction {transaction_id} "
                f"({redact(url)}): {said}; check the transaction id",
                response=response,
            )
    LOGGER.info("fetched transaction %d from %s", transaction_id, redact(url))
    return document
