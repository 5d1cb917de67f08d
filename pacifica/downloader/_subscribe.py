"""``pacifica-downloader subscribe``: the Notifications event match that feeds the download service.

Notifications (pacifica-notifications 0.5) keeps, per user, *event matches*:
a JSONPath tested against each event, a ``target_url`` the matching events
are POSTed to, and an optional ``auth`` sent with them
(``{"type": "header", "header": {"type": "Bearer", "credentials": ...}}``
becomes ``Authorization: Bearer ...``).  The user is whoever the header
``Http-Remote-User`` names (a site's front proxy sets it after checking
who calls); Notifications asks Policy whether that user may see each event
before routing it.  An event match whose target answers 4xx or 5xx, or
cannot be reached, is disabled for good (``disabled`` set, ``error`` the
reason).

:func:`subscribe` is idempotent: an enabled match of the user for the same
target is kept (its ``auth`` brought up to date when the token changed); a
disabled one is replaced by a new match (the old one deleted); otherwise a
match is created.  It returns the match's uuid.  The match's ``auth`` holds
the token, so nothing here logs or prints a match.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._bearer import BearerToken
from ._exceptions import DownloaderError, TransferError
from ._redaction import redact, summarize
from ._transport import Transport

LOGGER = logging.getLogger(__name__)

#: Every ingest event: what Metadata sends for each upload.
DEFAULT_JSONPATH = '$[?(@["eventType"] = "org.pacifica.metadata.ingest")]'
#: The header Notifications takes the user from (its ``USER_HEADER`` setting's default).
USER_HEADER = "Http-Remote-User"
#: The name the matches made here carry.
MATCH_NAME = "pacifica-downloader"


class SubscriptionError(DownloaderError):
    """Notifications refused or failed to list, create or update the event match.

    >>> issubclass(SubscriptionError, DownloaderError)
    True
    """


@dataclass(frozen=True)
class Plan:
    """What to do: ``keep`` the match ``uuid``, ``update`` its auth, or ``create`` one (deleting ``replace``)."""

    action: str
    uuid: str | None = None
    replace: tuple[str, ...] = ()


def _auth(token: BearerToken | None) -> dict[str, Any]:
    return {} if token is None else {"type": "header", "header": token.header()}


def plan(matches: Sequence[Mapping[str, Any]], target: str, jsonpath: str, token: BearerToken | None) -> Plan:
    """Decide, from the user's event matches, what makes one enabled match for ``target``.

    >>> plan([], "http://dl:8090/", "$", None)
    Plan(action='create', uuid=None, replace=())
    >>> plan([{"uuid": "u1", "target_url": "http://dl:8090/", "jsonpath": "$", "disabled": None, "auth": {}}],
    ...      "http://dl:8090/", "$", None)
    Plan(action='keep', uuid='u1', replace=())
    >>> plan([{"uuid": "u1", "target_url": "http://dl:8090/", "jsonpath": "$", "disabled": "2026-12-01T10:00:00"}],
    ...      "http://dl:8090/", "$", None)
    Plan(action='create', uuid=None, replace=('u1',))
    """
    mine = [match for match in matches if match.get("target_url") == target and not match.get("deleted")]
    enabled = [match for match in mine if not match.get("disabled")]
    disabled = tuple(str(match["uuid"]) for match in mine if match.get("disabled"))
    for match in enabled:
        if match.get("jsonpath") == jsonpath:
            same = (match.get("auth") or {}) == _auth(token)
            return Plan("keep" if same else "update", str(match["uuid"]), disabled)
    return Plan("create", None, disabled)


def _json(response: Any, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise SubscriptionError(
            f"Notifications answered {what} with something that is not JSON: {summarize(response.text[:500])}"
        ) from None


def _check(response: Any, what: str, ok: Sequence[int] = (200,)) -> None:
    if response.status_code not in ok:
        raise SubscriptionError(
            f"Notifications answered {what} with HTTP {response.status_code}: {summarize(response.text[:500])}",
            response=response,
        )


def subscribe(
    transport: Transport,
    notifications_url: str,
    user: str,
    target: str,
    jsonpath: str = DEFAULT_JSONPATH,
    token: BearerToken | None = None,
) -> str:
    """Make sure ``user`` has one enabled event match POSTing matching events to ``target``; return its uuid.

    ``token``, when given, is the match's ``auth`` (the download service's
    :mod:`bearer token <.bearer>`).  Raises :class:`SubscriptionError` when
    Notifications refuses, and :class:`TransferError` when it cannot be
    reached.
    """
    base = notifications_url.rstrip("/") + "/eventmatch"
    who = {USER_HEADER: user, "Accept": "application/json"}

    # Any answer is Notifications' last word (its 500s are refusals: a bad JSONPath, say); only failed connections
    # are tried again.
    def answered(response: Any) -> bool:
        return True

    try:
        listing = transport.request("GET", base, headers=who, is_final=answered)
        with listing:
            # Notifications answers 403 to a user who has no match yet.
            matches = [] if listing.status_code == 403 else _matches(listing)
        decision = plan(matches, target, jsonpath, token)
        for old in decision.replace:
            gone = transport.request("DELETE", f"{base}/{old}", headers=who, is_final=answered)
            with gone:
                _check(gone, f"DELETE of the disabled event match {old}", ok=(200, 204))
            LOGGER.info("deleted the disabled event match %s for %s", old, redact(target))
        if decision.action == "keep":
            LOGGER.info("the event match %s for %s is enabled already", decision.uuid, redact(target))
            return str(decision.uuid)
        body: dict[str, Any] = {"auth": _auth(token)}
        if decision.action == "update":
            answer = transport.request("PUT", f"{base}/{decision.uuid}", headers=who, json=body, is_final=answered)
        else:
            body.update(name=MATCH_NAME, jsonpath=jsonpath, target_url=target)
            answer = transport.request("POST", base, headers=who, json=body, is_final=answered)
        with answer:
            _check(answer, f"the {decision.action} of the event match")
            uuid = _json(answer, f"the {decision.action} of the event match").get("uuid")
    except TransferError as err:
        raise TransferError(
            f"could not reach Notifications at {redact(notifications_url)}", attempts=err.attempts
        ) from err
    if not uuid:
        raise SubscriptionError("Notifications answered the event match without its uuid")
    LOGGER.info(
        "event match %s %s for %s", uuid, "updated" if decision.action == "update" else "created", redact(target)
    )
    return str(uuid)


def _matches(listing: Any) -> list[Mapping[str, Any]]:
    _check(listing, "the list of event matches")
    found = _json(listing, "the list of event matches")
    if not isinstance(found, list) or not all(isinstance(match, dict) and "uuid" in match for match in found):
        raise SubscriptionError("Notifications' list of event matches is not a list of matches")
    return found
