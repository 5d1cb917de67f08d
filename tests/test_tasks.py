"""The download task without a broker: which errors are retried, what reaches the caller, how starts are bounded.

The task runs eagerly (``Task.apply``, Celery runs a retry at once, in
process) with the Downloader replaced by a scripted one; the real workers
are in test_download_workers.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

celery = pytest.importorskip("celery")

from support.events import event_for  # noqa: E402
from support.helpers import Clock  # noqa: E402

from pacifica.downloader import (  # noqa: E402
    CartFailedError,
    CartTimeoutError,
    DestinationError,
    IntegrityError,
    InvalidInputError,
    TransferError,
    UnsafeArchiveError,
    tasks,  # noqa: E402
)
from pacifica.downloader._exceptions import CartLost  # noqa: E402
from pacifica.downloader._incoming import hidden_folder  # noqa: E402
from pacifica.downloader._progress import Progress  # noqa: E402
from pacifica.downloader._task_starts import RedeliveryError, TaskStarts  # noqa: E402

EVENT = event_for({"a/one.txt": b"one\n", "two.txt": b"two\n"})
ENVIRON = {
    "BROKER_URL": "memory://",
    "BACKEND_URL": "cache+memory://",
    "DOWNLOADER_RETRY_BACKOFF": "0",
    "DOWNLOADER_MAX_RETRIES": "2",
}


class ScriptedDownloader:
    """Stands in for Downloader: raises the scripted errors one call after another, then writes the files."""

    script: list[BaseException] = []
    calls: list[dict[str, Any]] = []

    def __init__(self, location: Path, cart_api_url: str | None = None, **options: Any) -> None:
        self.location = Path(location)
        self.options = dict(options, cart_api_url=cart_api_url)

    def download(self, records: list[Any], **options: Any) -> list[str]:
        ScriptedDownloader.calls.append(dict(self.options, **options))
        if ScriptedDownloader.script:
            raise ScriptedDownloader.script.pop(0)
        paths = []
        for record in records:
            path = self.location / options["filename"] / record.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"one\n" if record.path.endswith("one.txt") else b"two\n")
            paths.append(str(path))
        return paths


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> type[ScriptedDownloader]:
    monkeypatch.setattr(tasks, "Downloader", ScriptedDownloader)
    ScriptedDownloader.script = []
    ScriptedDownloader.calls = []
    return ScriptedDownloader


@pytest.fixture
def app() -> Any:
    made = tasks.make_app(ENVIRON)
    yield made
    made.close()


def run(app: Any, event: Any, location: Path, **options: Any) -> Any:
    return app.tasks[tasks.TASK_NAME].apply(args=(event, str(location)), kwargs=options)


def test_the_task_on_an_app_of_ones_own_is_acknowledged_late_and_requeued_when_its_worker_dies() -> None:
    mine = celery.Celery("my-service", broker="memory://")
    tasks.register(mine, rate_limit="10/m")
    task = mine.tasks[tasks.TASK_NAME]
    assert (task.acks_late, task.reject_on_worker_lost, task.rate_limit) == (True, True, "10/m")
    made = tasks.make_app(ENVIRON)
    assert made.conf.worker_prefetch_multiplier == 1
    assert made.conf.task_routes[tasks.TASK_NAME] == {"queue": "pacifica.downloader"}
    assert made.conf.broker_transport_options == {"visibility_timeout": 43200.0}
    made.close()
    mine.close()


def test_success_returns_the_manifest(app: Any, scripted: Any, tmp_path: Path) -> None:
    result = run(app, EVENT, tmp_path, filename="ev1", keep_cart=True, cart_api_url="http://cartd:8081")
    assert result.successful(), result.traceback
    assert [(entry["path"], entry["size"], entry["hashtype"]) for entry in result.result] == [
        (str(tmp_path / "ev1/a/one.txt"), 4, "sha1"),
        (str(tmp_path / "ev1/two.txt"), 4, "sha1"),
    ]
    assert scripted.calls[0]["keep_cart"] is True and scripted.calls[0]["cart_api_url"] == "http://cartd:8081"
    assert not list((tmp_path / ".pacifica-downloader" / "tasks").iterdir()), "the start record is removed"


@pytest.mark.parametrize(
    "error",
    [
        TransferError("POST failed", attempts=["HTTP 503"]),
        CartFailedError("Cartd could not stage the cart"),
        CartLost("cart lost", cart_url="http://cartd/1", waited=60.0),
        CartTimeoutError("still staging"),
    ],
)
def test_transient_errors_are_retried(app: Any, scripted: Any, tmp_path: Path, error: Exception) -> None:
    scripted.script = [error, error]
    result = run(app, EVENT, tmp_path)
    assert result.successful(), result.traceback
    assert len(scripted.calls) == 3, "two failures, two retries, one success"


def test_transient_errors_fail_once_the_retries_are_spent(app: Any, scripted: Any, tmp_path: Path) -> None:
    scripted.script = [TransferError("GET failed", attempts=["reset"], cart_url="http://cartd:8081/abc")] * 3
    result = run(app, EVENT, tmp_path)
    assert result.failed()
    assert type(result.result) is TransferError
    assert "GET failed" in str(result.result) and "[cart http://cartd:8081/abc]" in str(result.result)
    assert len(scripted.calls) == 3, "DOWNLOADER_MAX_RETRIES=2: three runs"


def test_no_retries_when_max_retries_is_zero(scripted: Any, tmp_path: Path) -> None:
    made = tasks.make_app(dict(ENVIRON, DOWNLOADER_MAX_RETRIES="0"))
    scripted.script = [TransferError("GET failed")]
    result = run(made, EVENT, tmp_path)
    made.close()
    assert result.failed() and type(result.result) is TransferError
    assert len(scripted.calls) == 1


@pytest.mark.parametrize(
    "error",
    [
        IntegrityError("a.txt does not match its hash", path="data/a.txt"),
        UnsafeArchiveError("the tar entry 'data/a' is a symbolic link; refused"),
        DestinationError("cannot write: disk full", path="/srv/x"),
        InvalidInputError("no such folder name"),
    ],
)
def test_input_integrity_safety_and_destination_errors_are_not_retried(
    app: Any, scripted: Any, tmp_path: Path, error: Exception
) -> None:
    scripted.script = [error]
    result = run(app, EVENT, tmp_path)
    assert result.failed() and type(result.result) is type(error)
    assert len(scripted.calls) == 1


def test_a_bad_event_fails_before_any_download(app: Any, scripted: Any, tmp_path: Path) -> None:
    bad = event_for({"x.txt": b"x"})
    del bad["data"][-1]["hashsum"]
    result = run(app, bad, tmp_path)
    assert result.failed() and type(result.result) is InvalidInputError
    assert "hashsum" in str(result.result)
    assert scripted.calls == []


def test_unknown_options_are_refused(app: Any, scripted: Any, tmp_path: Path) -> None:
    result = run(app, EVENT, tmp_path, keep_carts=True)
    assert result.failed() and "unknown task options: keep_carts" in str(result.result)
    with pytest.raises(InvalidInputError, match="keep_carts"):
        tasks.enqueue(EVENT, tmp_path, celery_app=app, keep_carts=True)


def test_enqueue_refuses_a_bad_event_before_sending(app: Any, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="climbs out"):
        tasks.enqueue(event_for({"../x": b"x"}), tmp_path, celery_app=app)


def test_the_deadline_stays_below_the_visibility_timeout(app: Any, scripted: Any, tmp_path: Path) -> None:
    run(app, EVENT, tmp_path)
    run(app, EVENT, tmp_path, deadline=10**6)
    run(app, EVENT, tmp_path, deadline=30)
    limit = 43200 - tasks.DEADLINE_MARGIN
    assert [call["deadline"] for call in scripted.calls] == [limit, limit, 30]


# -- what survives a JSON result backend ----------------------------------------------


@pytest.mark.parametrize(
    "error, kind, words",
    [
        (
            InvalidInputError("the event cannot be downloaded", ["data[3]: missing 'hashsum'"]),
            InvalidInputError,
            ["data[3]: missing 'hashsum'"],
        ),
        (
            IntegrityError("does not match its sha1", path="data/a.txt", cart_url="http://u:p@cartd/9"),
            IntegrityError,
            ["[file data/a.txt]", "[cart http://cartd/9]"],
        ),
        (CartLost("cart lost", cart_url="http://cartd/1", waited=60.0), CartTimeoutError, ["[cart http://cartd/1]"]),
        (RedeliveryError("task t was started 3 times"), RedeliveryError, ["started 3 times"]),
    ],
)
def test_errors_keep_their_type_and_facts_through_json(
    app: Any, error: Exception, kind: type, words: list[str]
) -> None:
    stored = app.backend.prepare_exception(tasks.portable(error), "json")
    back = app.backend.exception_to_python(stored)
    assert type(back) is kind
    for word in words:
        assert word in str(back)
    assert "u:p" not in str(back), "credentials never reach the result backend"


# -- bounded redelivery ------------------------------------------------------------------


def test_starts_are_counted_and_bounded(tmp_path: Path) -> None:
    starts = TaskStarts(tmp_path, "task-1")
    assert [starts.start(limit=3) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(RedeliveryError, match="started 3 times and the worker running it died each time"):
        starts.start(limit=3)
    assert starts.start(limit=3) == 1, "after the refusal, the same download starts afresh"
    starts.finish()
    assert not starts.path.exists()


def test_retries_count_apart_and_odd_ids_stay_inside_the_folder(tmp_path: Path) -> None:
    first, retry = TaskStarts(tmp_path, "../../x", 0), TaskStarts(tmp_path, "../../x", 1)
    assert first.start(limit=1) == 1 and retry.start(limit=1) == 1
    assert first.path.parent == tmp_path / "tasks" and first.path != retry.path


def test_a_task_whose_workers_died_is_not_started_again(app: Any, scripted: Any, tmp_path: Path) -> None:
    task = app.tasks[tasks.TASK_NAME]
    dead = TaskStarts(hidden_folder(tmp_path), "dead-task")
    for _ in range(3):
        dead.start(limit=3)  # three starts whose worker never ended them
    result = task.apply(args=(EVENT, str(tmp_path)), task_id="dead-task")
    assert result.failed() and type(result.result) is RedeliveryError
    assert scripted.calls == []


# -- progress as the task's state --------------------------------------------------------


class RecordingTask:
    """Stands in for a bound task: records ``update_state`` calls; fails them when told to."""

    def __init__(self, fail: bool = False) -> None:
        self.states: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail
        self.request = type("Request", (), {"id": "t-1"})()

    def update_state(self, state: str, meta: dict[str, Any]) -> None:
        if self.fail:
            raise ConnectionError("the result backend is down")
        self.states.append((state, meta))


def test_progress_is_reported_per_phase_and_file_and_bytes_once_a_second() -> None:
    clock = Clock()
    task = RecordingTask()
    reports = tasks.StateReports(task, clock.monotonic)
    reports(Progress("staging", files_total=2, cart_url="http://u:p@cartd/1"))
    reports(Progress("staging", files_total=2))  # the same, at once: not sent
    reports(Progress("transferring", files_total=2, bytes_done=10))
    clock.now += 0.5
    reports(Progress("transferring", files_total=2, bytes_done=20))  # only more bytes, 0.5 s later: not sent
    clock.now += 0.6
    reports(Progress("transferring", files_total=2, bytes_done=30))  # 1.1 s later: sent
    reports(Progress("verifying", files_done=1, files_total=2, bytes_done=30))
    assert [(meta["phase"], meta["files_done"], meta["bytes_done"]) for _, meta in task.states] == [
        ("staging", 0, 0),
        ("transferring", 0, 10),
        ("transferring", 0, 30),
        ("verifying", 1, 30),
    ]
    assert {state for state, _ in task.states} == {"PROGRESS"}
    assert task.states[0][1]["cart_url"] == "http://cartd/1", "no credentials in the result backend"


def test_a_progress_report_that_cannot_be_sent_does_not_fail_the_download() -> None:
    tasks.StateReports(RecordingTask(fail=True))(Progress("staging"))
