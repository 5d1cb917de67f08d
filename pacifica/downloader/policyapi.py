"""The Policy service's side of a download: fetching a transaction-info document by its id.

:func:`fetch_transaction` goes through the download's :class:`Transport`,
so the document is fetched with the same session, credentials, TLS settings,
timeouts and retries as the cart; :mod:`.policy` turns it into file records.
"""
from __future__ import annotations

import logging
from typing import Any

from .cartapi import summarize
from .exceptions import PolicyError, TransferError
from .transport import Transport, redact

__all__ = ["fetch_transaction"]

LOGGER = logging.getLogger(__name__)


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
