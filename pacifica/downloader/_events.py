"""Turn a Pacifica Notifications CloudEvent into the files to download.

The Notifications service emits an event whose ``data`` is the flat list of
metadata objects of one ingest; those with ``"destinationTable": "Files"``
are the files.  Both CloudEvents 0.1 (``cloudEventsVersion``, ``eventID``)
and 1.0 structured form (``specversion``, ``id``) carry ``data`` the same
way, and an object of the ``cloudevents`` SDK is read through its ``data``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ._exceptions import InvalidInputError
from ._records import FileRecord, validate_records


def _event_data(event: Any) -> Any:
    """Return the ``data`` member of an event given as a mapping or an SDK object."""
    if isinstance(event, dict):
        if "data" not in event:
            raise InvalidInputError("the event has no 'data' member", [f"keys: {sorted(map(str, event))}"])
        data = event["data"]
    elif hasattr(event, "get_attributes") and hasattr(event, "get_data"):
        data = event.get_data()  # a cloudevents SDK object
    elif hasattr(event, "get_attributes") and hasattr(event, "data"):
        data = event.data  # a cloudevents SDK object (the v1 API)
    else:
        raise InvalidInputError(
            f"a CloudEvent must be a JSON object (dict) or a cloudevents SDK event, not {type(event).__name__}"
        )
    if isinstance(data, (bytes, bytearray, str)):
        try:
            data = json.loads(data)
        except ValueError as err:
            raise InvalidInputError(f"the event's data is not JSON: {err}") from None
    if not isinstance(data, list):
        raise InvalidInputError(
            f"the event's 'data' must be the list of ingested metadata objects, not {type(data).__name__}"
        )
    return data


def from_http(headers: Mapping[str, str], body: bytes | str) -> dict[str, Any]:
    """Rebuild the event a service received over HTTP, in binary or structured mode.

    Binary mode puts the attributes in ``ce-*`` headers and the data in the
    body; structured mode sends the whole event as JSON with
    ``Content-Type: application/cloudevents+json``.  The Notifications
    service posts plain JSON events, which are taken as structured.  Raises
    :class:`InvalidInputError` when no event can be read.

    >>> from_http({"ce-specversion": "1.0", "ce-id": "1", "ce-type": "t", "ce-source": "s"}, b"[]")["data"]
    []
    """
    fields = {key.lower(): value for key, value in headers.items()}
    try:
        payload = json.loads(body) if body else None
    except ValueError as err:
        raise InvalidInputError(f"the request body is not JSON: {err}") from None
    if "ce-specversion" in fields:
        event: dict[str, Any] = {key[3:]: value for key, value in fields.items() if key.startswith("ce-")}
        event["data"] = payload
        return event
    if not isinstance(payload, dict):
        raise InvalidInputError(
            "the request holds no CloudEvent: no ce-specversion header (binary mode) and no JSON object body"
        )
    return payload


def event_records(event: Any) -> list[FileRecord]:
    """Return the checked file records of ``event``, in event order.

    Raises :class:`InvalidInputError` listing every bad ``Files`` object.
    An event with no ``Files`` objects gives an empty list.
    """
    data = _event_data(event)
    files = (
        (f"data[{index}]", obj)
        for index, obj in enumerate(data)
        if not isinstance(obj, dict) or obj.get("destinationTable") == "Files"
    )
    return validate_records(files, what="event's Files records")
