"""Turn a Pacifica Notifications CloudEvent into the files to download.

The Notifications service emits an event whose ``data`` is the flat list of
metadata objects of one ingest; those with ``"destinationTable": "Files"``
are the files.  Both CloudEvents 0.1 (``cloudEventsVersion``, ``eventID``)
and 1.0 structured form (``specversion``, ``id``) carry ``data`` the same
way, and an object of the ``cloudevents`` SDK is read through its ``data``.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Callable

from .exceptions import InvalidInputError
from .records import FileRecord, entries_callable, validate_records

__all__ = ["CloudEvent", "event_records"]


def _event_data(event: Any) -> Any:
    """Return the ``data`` member of an event given as a mapping or an SDK object."""
    if isinstance(event, dict):
        if "data" not in event:
            raise InvalidInputError("the event has no 'data' member", [f"keys: {sorted(map(str, event))}"])
        data = event["data"]
    elif hasattr(event, "data") and hasattr(event, "get_attributes"):
        data = event.data  # a cloudevents SDK object
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


class CloudEvent:
    """Reads the files of a Pacifica Notifications CloudEvent.

    >>> files = CloudEvent.cloudevent(event)   # doctest: +SKIP
    >>> list(files())[0]                        # doctest: +SKIP
    {'id': '34', 'path': 'a/b/foo.txt', 'hashtype': 'sha1', 'hashsum': 'f1d2...'}
    """

    @staticmethod
    def cloudevent(cloudevent: Any) -> Callable[[], Iterator[dict[str, str]]]:
        """Return a callable yielding the event's files as Cartd ``fileids`` entries.

        The event is checked at once: a bad record raises
        :class:`InvalidInputError` here, before any cart is made.  The
        callable is what :meth:`CartAPI.setup_cart` takes.
        """
        return entries_callable(event_records(cloudevent))

    #: The name the released 0.x versions used.
    yield_files = cloudevent
