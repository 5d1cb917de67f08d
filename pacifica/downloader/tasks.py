"""Downloads as Celery tasks: ``celery -A pacifica.downloader.tasks worker`` is a download worker.

Needs the ``celery`` extra (``pip install 'pacifica-downloader[celery]'``).
The task, registered as ``pacifica.downloader.download``, takes
``(event, location)`` and the keywords ``filename``, ``timeout``,
``deadline``, ``keep_cart``, ``overwrite`` and ``cart_api_url`` (else the
worker's environment, as :class:`~pacifica.downloader.Downloader` reads
it), downloads the event's files into ``location`` (a path as the worker
sees it: shared storage, for many hosts) and returns the manifest, a JSON
list of ``{"path", "size", "hashtype", "hashsum"}``::

    from pacifica.downloader.tasks import enqueue
    result = enqueue(event, "/srv/incoming", filename=event["id"])
    manifest = result.get()

:data:`app` is configured from the environment, as the rest of Pacifica:

``BROKER_URL``, ``BACKEND_URL``
    the broker and the result backend (default: a Redis on
    ``127.0.0.1:6379``, database 0, for both).
``DOWNLOADER_QUEUE``
    the queue the tasks go through (default ``pacifica.downloader``): its
    own, so that a broker shared with Cartd's workers never hands one
    service the other's tasks.
``DOWNLOADER_VISIBILITY_TIMEOUT``
    seconds before a Redis or SQS broker hands a task whose worker's main
    process died to another worker (default 43200, 12 h); a download that
    ran longer would be delivered twice, so a task's ``deadline`` defaults
    to 5 minutes less.
``DOWNLOADER_MAX_RETRIES``, ``DOWNLOADER_RETRY_BACKOFF``
    how often a task that failed for a transient reason is run again
    (default 5) and the first pause (default 30 s, doubling each time, at
    most 10 minutes).
``DOWNLOADER_MAX_DELIVERIES``
    how often a task is started, at most, when its worker dies each time
    (default 3; see :mod:`.deliveries`).

What happens to a task:

* It is acknowledged only once it ends (``acks_late``), and put back in
  the queue when its worker dies (``reject_on_worker_lost``), at most
  ``DOWNLOADER_MAX_DELIVERIES`` times.  A task started again fetches only
  what is missing, and first deletes the carts the dead run left.
* Transient errors (:class:`~pacifica.downloader.TransferError`,
  :class:`~pacifica.downloader.CartError` and its timeouts and lost carts)
  are retried by Celery with backoff; input, integrity, safety and
  destination errors fail the task at once.
* It fails with the library's typed error, whose message carries the cart
  and the file concerned: result backends keep only an exception's type
  name and message.  No credential is in a task's arguments (a
  ``cart_api_url`` with ``user:password@`` is refused), states, result,
  error or traceback: the workers get theirs from their environment.

:func:`register` puts the same task on a Celery app of one's own; the
worker should then run with ``worker_prefetch_multiplier = 1`` (a worker
holding tasks it has not started delays them behind long downloads).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from celery import Celery, Task
from celery.result import AsyncResult

from ._compat import Downloader
from ._downloader import as_path
from ._events import event_records
from ._exceptions import CartError, DownloaderError, InvalidInputError, TransferError, os_error
from ._incoming import hidden_folder
from ._manifest import manifest
from ._permissions import make_folders
from ._progress import Progress
from ._redaction import redact
from ._task_starts import RedeliveryError, TaskStarts

__all__ = [
    "OPTIONS",
    "TASK_NAME",
    "TRANSIENT",
    "RedeliveryError",
    "StateReports",
    "app",
    "download",
    "enqueue",
    "make_app",
    "portable",
    "register",
]

# Documented, shown and pickled as what users import (pacifica.downloader.tasks.RedeliveryError).
RedeliveryError.__module__ = __name__

LOGGER = logging.getLogger(__name__)

#: The name the download task is registered under, on any app.
TASK_NAME = "pacifica.downloader.download"
#: The keyword options the task takes.
OPTIONS = frozenset({"filename", "timeout", "deadline", "keep_cart", "overwrite", "cart_api_url"})
#: The errors a later run may not meet: the server or the network, not the event, the data or the disk.
TRANSIENT: tuple[type[DownloaderError], ...] = (TransferError, CartError)
#: Seconds kept between a task's default deadline and the broker's visibility timeout.
DEADLINE_MARGIN = 300.0
_DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
#: Brokers that hand an unacknowledged task to another worker after a visibility timeout (kombu's default 3600 s).
_VISIBILITY_SCHEMES = {"redis", "rediss", "sqs"}


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        raise InvalidInputError(f"{name}={text!r} is not a number") from None
    if not value >= 0:
        raise InvalidInputError(f"{name}={text!r} must not be negative")
    return value


def make_app(environ: Mapping[str, str] | None = None) -> Celery:
    """A Celery app for download workers, configured from ``environ`` (default ``os.environ``; see the module)."""
    environ = os.environ if environ is None else environ
    broker = environ.get("BROKER_URL") or _DEFAULT_REDIS
    queue = environ.get("DOWNLOADER_QUEUE") or "pacifica.downloader"
    visibility = _number(environ, "DOWNLOADER_VISIBILITY_TIMEOUT", 43200.0)
    celery_app = Celery("pacifica.downloader", broker=broker, backend=environ.get("BACKEND_URL") or broker)
    celery_app.conf.update(
        task_default_queue=queue,
        task_routes={TASK_NAME: {"queue": queue}},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_track_started=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": visibility},
        result_backend_transport_options={"visibility_timeout": visibility},
        broker_connection_retry_on_startup=True,
        pacifica_downloader_max_retries=int(_number(environ, "DOWNLOADER_MAX_RETRIES", 5)),
        pacifica_downloader_retry_backoff=_number(environ, "DOWNLOADER_RETRY_BACKOFF", 30.0),
        pacifica_downloader_max_deliveries=max(1, int(_number(environ, "DOWNLOADER_MAX_DELIVERIES", 3))),
    )
    register(celery_app)
    return celery_app


def register(celery_app: Celery, name: str = TASK_NAME, **task_options: Any) -> Task:
    """Register the download task on ``celery_app`` under ``name``; return it.

    ``task_options`` go to ``celery_app.task`` (e.g. ``time_limit=``; a queue
    is chosen with the app's ``task_routes``, as :func:`make_app` does).  Retries
    and deliveries are bounded by the app's settings ``pacifica_downloader_*``
    when :func:`make_app` made it, else by the defaults of the module.
    """
    options: dict[str, Any] = {"acks_late": True, "reject_on_worker_lost": True, "max_retries": None}
    options.update(task_options)
    task: Task = celery_app.task(name=name, bind=True, shared=False, **options)(_run)
    return task


def _setting(task: Task, name: str, default: float) -> float:
    value = getattr(task.app.conf, f"pacifica_downloader_{name}", None)
    return default if value is None else float(value)  # 0 is a setting (no retries), not a missing one


def _check_options(options: Mapping[str, Any]) -> None:
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise InvalidInputError(f"unknown task options: {', '.join(unknown)}; known: {', '.join(sorted(OPTIONS))}")
    url = options.get("cart_api_url")
    if isinstance(url, str) and redact(url) != url:
        # A task's arguments are kept by the broker, logged by workers and stored by a result backend that
        # keeps them (result_extended); credentials go to the workers' environment instead.
        raise InvalidInputError(
            "cart_api_url must not carry credentials (user:password@): a task's arguments are kept by the broker "
            "and may be logged and stored; give the workers CARTD_CART_API_URL with them instead"
        )


def _run(task: Task, event: Any, location: str, **options: Any) -> list[dict[str, Any]]:
    """The task: download ``event`` into ``location``; return the manifest."""
    _check_options(options)
    records = event_records(event)  # an event that cannot be downloaded fails here, before any other step
    root = as_path(location)
    try:
        make_folders(root)
    except OSError as err:
        raise os_error(err, str(root), "create the download directory") from err
    starts = TaskStarts(hidden_folder(root), str(task.request.id), int(task.request.retries or 0))
    starts.start(int(_setting(task, "max_deliveries", 3)))
    try:
        paths = _download(task, records, root, options)
        return manifest(records, paths)
    except TRANSIENT as err:
        retries = int(task.request.retries or 0)
        limit = int(_setting(task, "max_retries", 5))
        pause = min(600.0, _setting(task, "retry_backoff", 30.0) * 2**retries)
        LOGGER.warning(
            "task %s: %s; %s",
            task.request.id,
            _first_line(err),
            f"retrying in {pause:.0f} s (retry {retries + 1} of {limit})" if retries < limit else "no retries left",
        )
        raise task.retry(exc=portable(err), countdown=pause, max_retries=limit) from err
    except DownloaderError as err:
        raise portable(err) from err
    finally:  # ended, one way or another: only a start that never gets here counts as a dead worker
        starts.finish()


def _download(task: Task, records: list[Any], root: Path, options: dict[str, Any]) -> list[str]:
    deadline = options.get("deadline")
    limit = _visibility_limit(task)
    if limit is not None and (deadline is None or deadline > limit):
        if deadline is not None:
            LOGGER.warning(
                "task %s: deadline %.0f s cut to %.0f s, below the broker's visibility timeout "
                "(a longer task would be delivered twice)",
                task.request.id,
                deadline,
                limit,
            )
        deadline = limit
    down = Downloader(
        root,
        options.get("cart_api_url"),
        keep_cart=bool(options.get("keep_cart", False)),
        overwrite=bool(options.get("overwrite", True)),
        progress=StateReports(task),
    )
    return down.download(
        records, filename=options.get("filename") or "data", timeout=options.get("timeout"), deadline=deadline
    )


class StateReports:
    """A download's progress as its task's state, ``PROGRESS``, whose meta are the :class:`Progress` fields.

    A caller (``AsyncResult(id).info``) or a status page sees the phase and
    the counts.  Sent when the phase or the number of files done changes,
    and for bytes alone at most once a second, so a download writes to the
    result backend at most about once per file.  A report that cannot be
    sent is logged, never raised: it must not fail the download.
    """

    #: Seconds between two reports that only count more bytes.
    BYTES_EVERY = 1.0

    def __init__(self, task: Any, clock: Callable[[], float] = time.monotonic) -> None:
        """Report to ``task`` (its ``update_state``)."""
        self.task = task
        self._clock = clock
        self._last: tuple[str, int] | None = None
        self._sent = 0.0
        self._lock = threading.Lock()

    def __call__(self, progress: Progress) -> None:
        """Send ``progress`` unless the last report said the same less than a second ago."""
        now = self._clock()
        with self._lock:
            key = (progress.phase, progress.files_done)
            if key == self._last and now - self._sent < self.BYTES_EVERY:
                return
            self._last, self._sent = key, now
            meta = dataclasses.asdict(progress)
            meta["cart_url"] = redact(progress.cart_url) if progress.cart_url else None
            try:
                self.task.update_state(state="PROGRESS", meta=meta)
            except Exception as err:  # noqa: BLE001 - a status report must never fail the download
                LOGGER.debug("could not report the progress of task %s: %s", self.task.request.id, err)


def _visibility_limit(task: Task) -> float | None:
    """The longest a download may run before the broker would hand it to a second worker (None: no such limit)."""
    conf = task.app.conf
    visibility = (conf.broker_transport_options or {}).get("visibility_timeout")
    if visibility is None:
        scheme = urlsplit(str(conf.broker_url or "")).scheme.split("+")[0]
        visibility = 3600 if scheme in _VISIBILITY_SCHEMES else None
    return None if visibility is None else max(60.0, float(visibility) - DEADLINE_MARGIN)


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


#: Where the error types a caller imports are defined (a private subclass, such as ``CartLost``, is sent as these).
_PUBLIC_MODULES = {__package__, __name__}


def portable(err: DownloaderError) -> DownloaderError:
    """``err`` as its nearest public type, its message naming the cart and file: what a result backend keeps.

    A JSON result backend keeps an exception's type name and its one
    argument; attributes (``cart_url``, ``path``, ``problems``) are lost.
    """
    kind: type[DownloaderError] = next(
        (cls for cls in type(err).__mro__ if issubclass(cls, DownloaderError) and cls.__module__ in _PUBLIC_MODULES),
        DownloaderError,
    )
    message = str(err)
    cart_url = redact(err.cart_url) if err.cart_url else ""
    if cart_url and cart_url not in message:
        message += f" [cart {cart_url}]"
    path = str(getattr(err, "path", "") or "")
    if path and path not in message:
        message += f" [file {path}]"
    return kind(message)


def enqueue(
    event: Any,
    location: str | os.PathLike[str],
    *,
    celery_app: Celery | None = None,
    task_id: str | None = None,
    **options: Any,
) -> AsyncResult:
    """Queue the download of ``event`` (its JSON form) into ``location``; return the task's result handle.

    The event is checked here first: one that cannot be downloaded raises
    :class:`~pacifica.downloader.InvalidInputError` at once, not in a
    worker.  ``options`` are the task's keywords (see the module);
    ``celery_app`` defaults to :data:`app`; ``task_id`` chooses the task's
    id (default: a new one).
    """
    _check_options(options)
    event_records(event)
    sender = app if celery_app is None else celery_app
    return sender.send_task(TASK_NAME, args=(event, os.fspath(location)), kwargs=options, task_id=task_id)


#: The download workers' app: ``celery -A pacifica.downloader.tasks worker``.
app = make_app()
#: The download task of :data:`app`.
download = app.tasks[TASK_NAME]
