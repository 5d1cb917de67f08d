"""``pacifica-downloader serve``: the facility's download service, fed by Notifications.

Subscribe its URL to the Notifications service (``pacifica-downloader
subscribe``).  Each event POSTed to it, in CloudEvents structured mode (as
Notifications sends it) or binary mode, is

1. checked against ``DOWNLOADER_SERVE_TOKEN`` when one is set (:mod:`.bearer`):
   a POST without ``Authorization: Bearer <token>`` gets ``401`` and leaves
   no trace;
2. recorded durably (fsynced, renamed into place) in the download area's
   hidden folder (:mod:`.journal`) -- and only then answered, ``202`` for an
   event to download, ``200`` for one already recorded (Notifications, or a
   second subscription, may send the same event again: it is queued once);
3. queued for the download workers (:mod:`.tasks`) whenever the broker can
   be reached: at once, by a background loop every few seconds, and at
   start-up, so that an event recorded while the broker was down, or just
   before the service was killed, is downloaded once both are back.  (Killed
   between a send and its record, the service sends that event again after a
   restart, under the same task id; the download of an event already on
   disk fetches nothing.)

An authenticated event that cannot be downloaded (not an event, no files,
a bad record) is recorded as **rejected** with the reason, logged and
answered ``200``: Notifications disables an event match for good on any 4xx
or 5xx answer, so one bad event must not end the site's subscription.  The
service answers ``5xx`` to an authenticated POST only when it cannot record
it at all (the disk is full or unwritable).

Where files land: the event's id names its record and its folder, so the
files of event ``E`` land in ``DIR/E/<subdir>/<name>`` (an id that is not a
plain file name -- letters, digits, ``.``, ``_``, ``-`` -- is made one, with
a digest of the id appended so two ids never share a folder).  Pacifica's
Metadata names its ingest events ``metadata.ingest.<transaction id>``.

``GET /status/<id>`` tells where an event stands (``received``, ``queued``
with the task's state, progress, manifest or error, or ``rejected`` with the
reason); ``GET /health`` whether the broker is reachable and how many events
wait to be queued (``503`` while the broker is not).

Requests are bounded: an event body of at most :data:`MAX_EVENT_BYTES`
(a larger one is read, dropped and recorded as rejected), every socket has a
:data:`REQUEST_TIMEOUT`, and at most :data:`MAX_CONNECTIONS` are served at
once (others wait in the listen queue).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from ._bearer import BearerToken
from ._events import event_records, from_http
from ._exceptions import InvalidInputError
from ._journal import QUEUED, RECEIVED, REJECTED, EventJournal, EventRecord
from ._redaction import quote_known

LOGGER = logging.getLogger(__name__)

DEFAULT_PORT = 8090
#: The largest event body read (an ingest of 100 000 files is about 40 MB of JSON).
MAX_EVENT_BYTES = 256 * 1024 * 1024
#: Seconds between two attempts at queuing the events that wait (they are also queued as soon as recorded).
QUEUE_EVERY = 5.0
#: Seconds a client may leave its socket silent before the service closes it.
REQUEST_TIMEOUT = 30.0
#: Connections served at once.
MAX_CONNECTIONS = 32
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CHUNK = 1024 * 1024

#: How long the service's sends and result lookups insist on a broker or backend that is down (about 1.5 s).
_GIVE_UP_SOON = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}
#: What sends a recorded event to the workers: returns the task's id, raises when the broker cannot take it.
Sender = Callable[[EventRecord], str]
#: What tells how a queued task is doing (a mapping of JSON-ready values).
Reporter = Callable[[str], Mapping[str, Any]]
#: What raises when the broker cannot be reached.
Probe = Callable[[], None]


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status code and JSON body."""

    status: int
    body: Mapping[str, Any]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_key(identity: str) -> str:
    """The record name and download folder of the event whose id is ``identity``.

    >>> record_key("metadata.ingest.42")
    'metadata.ingest.42'
    >>> record_key("../../etc")   # doctest: +ELLIPSIS
    'etc-...'
    """
    if _PLAIN.fullmatch(identity):
        return identity
    plain = re.sub(r"[^A-Za-z0-9._-]+", "_", identity).strip("._-")[:80] or "event"
    return f"{plain}-{_digest(identity.encode('utf-8', 'surrogatepass'))[:12]}"


def _identity(event: Mapping[str, Any]) -> str | None:
    value = event.get("id", event.get("eventID"))
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value).strip()
    return None


def _data_digest(event: Mapping[str, Any]) -> str:
    canonical = json.dumps(event.get("data"), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return _digest(canonical.encode())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class DownloadService:
    """What the service does with a request, without HTTP: record, reject, queue, report (see the module)."""

    def __init__(
        self, journal: EventJournal, sender: Sender, reporter: Reporter | None = None, probe: Probe | None = None
    ) -> None:
        """Record into ``journal``, queue with ``sender``, report tasks with ``reporter``, probe with ``probe``."""
        self.journal = journal
        self.sender = sender
        self.reporter = reporter
        self.probe = probe
        #: Set when an event is recorded, so that the queue loop sends it at once.
        self.wake = threading.Event()
        self.broker_error: str | None = None

    # -- receiving -----------------------------------------------------------------------

    def receive(self, headers: Mapping[str, str], body: bytes) -> Answer:
        """Record the event of an authenticated POST; answer 202 (to download), 200 (known or rejected)."""
        try:
            event = from_http(headers, body)
        except InvalidInputError as err:
            return self.reject(f"unreadable-{_digest(body)[:16]}", str(err), size=len(body))
        identity = _identity(event)
        if identity is None:
            return self.reject(
                f"no-id-{_digest(body)[:16]}", "the event has no id ('id' or 'eventID')", event=event, size=len(body)
            )
        key, digest = record_key(identity), _data_digest(event)
        existing = self.journal.find(key)
        if existing is not None and existing.data_digest != digest:
            return self.reject(
                f"{key}~{digest[:12]}",
                f"an event with the id {identity!r} and other data was "
                f"recorded on {existing.received}; this one is not downloaded",
                event=event,
            )
        if existing is not None:
            return self._known(existing)
        try:
            records = event_records(event)
        except InvalidInputError as err:
            return self.reject(key, str(err), event=event, digest=digest)
        if not records:
            return self.reject(key, "the event lists no files", event=event, digest=digest)
        record = EventRecord(
            key, RECEIVED, _now(), event=event, folder=key, data_digest=digest, details={"files": len(records)}
        )
        existing = self.journal.add(record)
        if existing is not None:  # the same event, recorded by another request meanwhile
            return self._known(existing)
        LOGGER.info("recorded event %s (%d files); queuing its download", key, len(records))
        self.wake.set()
        return Answer(202, {"event": key, "state": RECEIVED, "folder": key, "status": f"/status/{key}"})

    def reject(
        self, key: str, reason: str, *, event: Any = None, digest: str | None = None, size: int | None = None
    ) -> Answer:
        """Record that the event ``key`` cannot be downloaded, and why; answer 200 (see the module)."""
        details = {} if size is None else {"bytes": size}
        record = EventRecord(key, REJECTED, _now(), event=event, reason=reason, data_digest=digest, details=details)
        existing = self.journal.add(record)
        if existing is not None:
            return self._known(existing)
        LOGGER.warning("rejected event %s, which cannot be downloaded: %s", key, quote_known(reason))
        return Answer(200, {"event": key, "state": REJECTED, "reason": reason, "status": f"/status/{key}"})

    @staticmethod
    def _known(record: EventRecord) -> Answer:
        LOGGER.info("event %s received again; it is %s already", record.key, record.state)
        return Answer(
            200, {"event": record.key, "state": record.state, "duplicate": True, "status": f"/status/{record.key}"}
        )

    # -- queuing -------------------------------------------------------------------------

    def queue_pending(self) -> int:
        """Queue every event recorded and not yet queued, oldest first, until the broker refuses; return how many."""
        queued = 0
        for record in self.journal.pending():
            try:
                task = self.sender(record)
            except Exception as err:  # noqa: BLE001 - any failure of the broker: keep the record, try again later
                if self.broker_error is None:
                    LOGGER.warning(
                        "cannot queue event %s: the broker cannot be reached (%s); it stays recorded "
                        "and is queued once the broker is back",
                        record.key,
                        quote_known(str(err)),
                    )
                self.broker_error = quote_known(f"{type(err).__name__}: {err}")
                return queued
            self.journal.mark_queued(record, task)
            LOGGER.info("queued event %s as task %s", record.key, task)
            queued += 1
        if self.broker_error is not None and queued:
            LOGGER.info("the broker is back; %d waiting events queued", queued)
        if queued:
            self.broker_error = None
        return queued

    def queue_loop(self, stop: threading.Event, every: float = QUEUE_EVERY) -> None:
        """Queue what waits now, then whenever an event is recorded or ``every`` seconds pass, until ``stop``."""
        while not stop.is_set():
            self.wake.clear()
            try:
                self.queue_pending()
            except Exception:  # a bug or an unreadable journal: log it, and keep the service answering
                LOGGER.exception("queuing the recorded events failed; trying again in %.0f s", every)
            self.wake.wait(every)

    # -- reporting -----------------------------------------------------------------------

    def status(self, key: str) -> Answer:
        """Where event ``key`` stands: its state, folder, reason or task (with the task's state and results)."""
        record = self.journal.find(key)
        if record is None:
            return Answer(404, {"event": key, "error": "no event recorded under this id"})
        body: dict[str, Any] = {"event": key, "state": record.state, "received": record.received}
        if record.folder:
            body["folder"] = str(self.journal.location / record.folder)
        if record.reason:
            body["reason"] = record.reason
        if record.task:
            body["task"] = record.task
        if record.state == QUEUED and record.task and self.reporter is not None:
            try:
                body.update(self.reporter(record.task))
            except Exception as err:  # noqa: BLE001 - the result backend is down: say so, the record stands
                body["task_state"] = "UNKNOWN"
                body["error"] = f"the result backend cannot be reached: {quote_known(str(err))}"
        return Answer(200, body)

    def health(self) -> Answer:
        """Whether the broker can be reached, and how many events wait to be queued (503 while it cannot)."""
        error = None
        if self.probe is not None:
            try:
                self.probe()
            except Exception as err:  # noqa: BLE001 - any failure to reach the broker is the answer
                error = quote_known(f"{type(err).__name__}: {err}")
        body: dict[str, Any] = {
            "broker": "unreachable" if error else "reachable",
            "waiting": self.journal.count(RECEIVED),
            "rejected": self.journal.count(REJECTED),
            "queued": self.journal.count(QUEUED),
        }
        if error:
            body["broker_error"] = error
        return Answer(503 if error else 200, body)


# -- HTTP ------------------------------------------------------------------------------------


class EventServer(ThreadingHTTPServer):
    """The HTTP side: a threading server bounded in connections, each request handled by :class:`_Handler`."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        service: DownloadService,
        token: BearerToken | None,
        max_event_bytes: int = MAX_EVENT_BYTES,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        """Listen on ``address`` for ``service``; POSTs must present ``token`` when it is not None."""
        self.service = service
        self.token = token
        self.max_event_bytes = max_event_bytes
        self.request_timeout = request_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Wait for a free slot, then serve the connection in a thread of its own."""
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection; free its slot after."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: EventServer
    server_version = "pacifica-downloader-serve"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)  # a silent client is let go

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        LOGGER.debug("%s %s", self.client_address[0], format % args)

    def _answer(self, answer: Answer, extra: Mapping[str, str] | None = None) -> None:
        payload = json.dumps(answer.body, ensure_ascii=True).encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _authorized(self) -> bool:
        token = self.server.token
        return token is None or token.admits(self.headers.get("Authorization"))

    def _refuse(self) -> None:
        LOGGER.warning("refused a %s from %s: no valid bearer token", self.command, self.client_address[0])
        self.close_connection = True
        self._answer(
            Answer(401, {"error": "a bearer token is required (Authorization: Bearer <token>)"}),
            {"WWW-Authenticate": 'Bearer realm="pacifica-downloader"', "Connection": "close"},
        )

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        """An event: authenticate, read within bounds, record (see the module)."""
        if not self._authorized():
            self._refuse()
            return
        service = self.server.service
        length_text = self.headers.get("Content-Length")
        try:
            length = int(length_text) if length_text is not None else -1
        except ValueError:
            length = -1
        try:
            if length < 0:  # chunked or unknown: the body is not read, the connection is closed
                self.close_connection = True
                answer = service.reject(
                    f"unread-{time.time_ns()}", "the request has no valid Content-Length; its body was not read"
                )
            elif length > self.server.max_event_bytes:
                self._drain(length)
                answer = service.reject(
                    f"too-large-{time.time_ns()}",
                    f"the request body has {length} bytes, more than the {self.server.max_event_bytes} read",
                    size=length,
                )
            else:
                body = self.rfile.read(length)
                if len(body) < length:  # the client went away: nothing to answer
                    self.close_connection = True
                    return
                answer = service.receive(dict(self.headers.items()), body)
        except OSError as err:  # the journal could not be written: the one case for a 5xx
            LOGGER.error("cannot record an event: %s", err)
            answer = Answer(503, {"error": f"the event could not be recorded: {err}"})
        self._answer(answer, {"Location": answer.body["status"]} if "status" in answer.body else None)

    def _drain(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, _CHUNK))
            if not chunk:
                break
            length -= len(chunk)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        """``/health``, or ``/status/<id>`` (which needs the token, as a POST does)."""
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self._answer(self.server.service.health())
        elif path.startswith("/status/") and len(path) > len("/status/"):
            if not self._authorized():
                self._refuse()
                return
            key = path[len("/status/") :]
            if "/" in key or key.startswith("."):
                self._answer(Answer(404, {"error": "no such event"}))
                return
            self._answer(self.server.service.status(key))
        else:
            self._answer(Answer(404, {"error": "POST events to any path; GET /status/<id> or /health"}))

    def _not_allowed(self) -> None:
        self.close_connection = True
        self._answer(
            Answer(405, {"error": "POST an event, or GET /status/<id> or /health"}),
            {"Allow": "GET, POST", "Connection": "close"},
        )

    do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815 - http.server's names


def celery_hooks(
    location: Path, options: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> tuple[Sender, Reporter, Probe]:
    """The sender, reporter and probe of a service queuing to the download workers' broker (``celery`` extra).

    The app is :func:`~pacifica.downloader.tasks.make_app`'s, from
    ``environ`` (``BROKER_URL``, ``BACKEND_URL``, ``DOWNLOADER_QUEUE``), with
    short connection timeouts so that a broker that is down is found out in
    seconds.  The task's id is derived from the event's record, so an event
    queued again after a crash between the send and its record is the same
    task.
    """
    from celery.result import AsyncResult

    from .tasks import enqueue, make_app

    app = make_app(environ)
    app.conf.update(
        broker_connection_timeout=5.0,
        redis_socket_connect_timeout=5.0,
        redis_socket_timeout=10.0,
        # A send that fails is tried again by the queue loop: give up within a second or two, not a minute.
        task_publish_retry_policy=_GIVE_UP_SOON,
        # Sending a task first subscribes to its result on a Redis backend, which retries for about 20 s.
        result_backend_transport_options={**app.conf.result_backend_transport_options, "retry_policy": _GIVE_UP_SOON},
    )

    def send(record: EventRecord) -> str:
        task_id = "event-" + _digest(record.key.encode())[:32]
        result = enqueue(record.event, location, celery_app=app, task_id=task_id, filename=record.folder, **options)
        return str(result.id)

    def report(task_id: str) -> Mapping[str, Any]:
        result = AsyncResult(task_id, app=app)
        state = result.state
        body: dict[str, Any] = {"task_state": state}
        if state == "PROGRESS":
            body["progress"] = result.info
        elif state == "SUCCESS":
            body["files"] = result.result
        elif state == "FAILURE":
            body["error"] = f"{type(result.result).__name__}: {result.result}"
        return body

    def probe() -> None:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=5.0)

    return send, report, probe
