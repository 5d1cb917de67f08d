#!/usr/bin/env python3
"""Benchmark this library against its last release, ``curl | tar`` and the server itself, on a real Cartd stack.

::

    python3 dev.py bench                 # the full run (about 20 minutes), results into benchmarks/README.md
    python3 dev.py bench --quick         # a smoke run with small events (about two minutes)
    python benchmarks/run.py --help      # every option (runs per event, sizes, work directory ...)

It starts the loopback stack of ``tests/support/cartd_stack.py`` (one solo worker),
archives three events (10 × 1 KiB, 2000 × 64 KiB, 200 × 5 MiB), and for each
one, run after run:

1. this library end to end with its defaults, then again into the same folder
   (the re-run, nothing to fetch), and the release end to end;
2. the bare poller POSTs a cart and HEADs it every 10 ms until it is ready
   (when the server itself is done); on that ready cart ``curl -o
   /dev/null``, ``curl | tar -x`` and the release are timed transferring it,
   and this library on ready carts of the same files as it asked for in
   step 1 (transfer only); then the carts are deleted.

Then the 2000-file event again on a stack with two worker processes, and on
a stack with Cartd on SQLite (its default database; end to end only).  Every
client runs in its own process (peak RSS: each Python client's VmHWM); every
download is checked file by file against the event's hashes and deleted;
every cart is deleted.  See README.md beside this file for the method and
the results.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from clients import (  # noqa: E402
    POLL_INTERVAL,
    RELEASE_REQUIREMENT,
    CartServer,
    ChildRun,
    ClientError,
    curl_null,
    curl_tar,
    ensure_release_venv,
    run_current,
    run_release,
)
from events import KIB, MIB, Event, EventSpec, make_event, verify_download  # noqa: E402
from report import (  # noqa: E402
    CUR_E2E,
    CUR_E2E_PAR,
    CUR_RERUN,
    CUR_TRANSFER,
    CUR_TRANSFER_OWN,
    CURL_NULL,
    CURL_TAR,
    READY,
    REL_E2E,
    REL_TRANSFER,
    EventResult,
    machine_lines,
    render,
    write_readme,
)
from support.cartd_stack import STACK_REQUIREMENTS, CartdStack, default_stack_venv_path, ensure_stack_venv  # noqa: E402
from workerlog import log_end, worker_time  # noqa: E402

#: Archive ids of each event start here, so events never share a file.
FIRST_IDS = {"tiny": 1_000, "many": 10_000, "large": 100_000}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 10 × 1 KiB, 300 × 64 KiB, 60 × 5 MiB, fewer runs; README left alone",
    )
    parser.add_argument("--runs-tiny", type=int, help="runs of the 10 × 1 KiB event (default 5, quick 2)")
    parser.add_argument("--runs-many", type=int, help="runs of the 2000 × 64 KiB event (default 1, quick 1)")
    parser.add_argument("--runs-large", type=int, help="runs of the 200 × 5 MiB event (default 2, quick 1)")
    parser.add_argument(
        "--transfer-runs", type=int, help="transfer-only runs of each client on each ready cart (default 3, quick 1)"
    )
    parser.add_argument("--many-files", type=int, help="files of the 64 KiB event (default 2000, quick 300)")
    parser.add_argument("--large-files", type=int, help="files of the 5 MiB event (default 200, quick 60)")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=POLL_INTERVAL,
        help="seconds between the bare poller's HEAD requests (default 0.01)",
    )
    parser.add_argument(
        "--events", default="tiny,many,large", help="which events to run, comma-separated (default tiny,many,large)"
    )
    parser.add_argument(
        "--no-workers2",
        dest="workers2",
        action="store_false",
        help="skip the 64 KiB event on a stack with 2 worker processes",
    )
    parser.add_argument(
        "--no-sqlite",
        dest="sqlite",
        action="store_false",
        help="skip the 64 KiB event on a stack with Cartd on SQLite (its default database)",
    )
    parser.add_argument(
        "--readme",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the results into benchmarks/README.md (default: yes, except with --quick)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="where the stack, the archive and the downloads live (default: a new temp dir)"
    )
    parser.add_argument("--keep-workdir", action="store_true", help="leave the work directory (logs) in place")
    parser.add_argument(
        "--release-venv",
        type=Path,
        default=HERE / ".venv-release",
        help="the virtualenv the release is installed into (default benchmarks/.venv-release)",
    )
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a target fails")
    return parser.parse_args(argv)


def event_specs(args: argparse.Namespace) -> list[EventSpec]:
    """The events to run, sized for a full or a quick run."""
    quick = args.quick

    def pick(value: int | None, full: int, small: int) -> int:
        return value if value is not None else (small if quick else full)

    many = pick(args.many_files, 2000, 300)
    large = pick(args.large_files, 200, 60)
    specs = {
        "tiny": EventSpec("tiny", "10 × 1 KiB", 10, KIB, pick(args.runs_tiny, 5, 2)),
        "many": EventSpec("many", f"{many} × 64 KiB", many, 64 * KIB, pick(args.runs_many, 1, 1)),
        "large": EventSpec(
            "large", f"{large} × 5 MiB ({large * 5 / 1024:.2g} GiB)", large, 5 * MIB, pick(args.runs_large, 2, 1)
        ),
    }
    wanted = [key.strip() for key in args.events.split(",") if key.strip()]
    unknown = sorted(set(wanted) - set(specs))
    if unknown:
        raise SystemExit(f"unknown event(s): {', '.join(unknown)}; choose from {', '.join(specs)}")
    return [specs[key] for key in wanted]


class Bench:
    """Runs the contenders on one stack and records their results."""

    def __init__(
        self, stack: CartdStack, release_python: Path, scratch: Path, transfer_runs: int, poll_interval: float
    ) -> None:
        """Use ``stack``; downloads and notes go under ``scratch``; the poller polls every ``poll_interval`` s."""
        self.stack = stack
        self.api = stack.cart_url
        self.release_python = release_python
        self.scratch = scratch
        self.transfer_runs = transfer_runs
        self.server = CartServer(stack.cart_url, poll_interval)
        self.dest = scratch / "download"

    # -- one event ----------------------------------------------------------------

    def run_event(self, spec: EventSpec, workers: int = 1, database: str = "postgres") -> EventResult:
        """Every run of one event: end to end (and the re-run), then the ready-cart round.

        On another stack than the default (several workers, or SQLite) only
        the poller and the end-to-end round run, plus the library with as many
        carts staging at once as there are workers.
        """
        result = EventResult(spec, workers=workers, database=database)
        event, event_file = self.load(spec)
        for index in range(spec.runs):
            started = time.monotonic()
            if result.default_stack:
                self.e2e_round(result, event, event_file, index)
                self.ready_round(result, event, event_file)
            else:
                self.poll_only(result, event)
                self.e2e_round(result, event, event_file, index, max_staging=workers if workers > 1 else None)
            print(
                f"bench: {result.label}: run {index + 1}/{spec.runs} done in {time.monotonic() - started:.1f} s",
                flush=True,
            )
        self.check_clean(result)
        return result

    def load(self, spec: EventSpec) -> tuple[Event, Path]:
        """Archive the event's files (unless there already); return the event and its JSON file."""
        started = time.monotonic()
        event = make_event(spec, FIRST_IDS[spec.key], self.stack.put_file, self.stack.archive_url)
        print(f"bench: {spec.label}: archived in {time.monotonic() - started:.1f} s", flush=True)
        return event, event.write(self.scratch / f"event-{spec.key}.json")

    def carts_file(self, event: Event) -> Path:
        """Where the library's last end-to-end run noted the files of each of its carts."""
        return self.scratch / f"carts-{event.spec.key}.json"

    # -- the rounds ---------------------------------------------------------------

    def e2e_round(
        self, result: EventResult, event: Event, event_file: Path, index: int, max_staging: int | None = None
    ) -> None:
        """This library end to end (then its re-run) and the release end to end; who goes first alternates.

        With ``max_staging`` the library runs a second time with that many carts staging at once.
        """

        def library() -> None:
            record = self.carts_file(event)
            rerun = result.default_stack
            first = self.download(
                result,
                CUR_E2E,
                event,
                keep=rerun,
                action=lambda dest: run_current("e2e", self.api, event_file, dest, record_carts=record),
            )
            if first is not None and rerun:
                self.rerun(result, event, event_file)
            if max_staging:
                self.download(
                    result,
                    CUR_E2E_PAR,
                    event,
                    action=lambda dest: run_current("e2e", self.api, event_file, dest, max_staging=max_staging),
                )

        def release() -> None:
            self.download(
                result,
                REL_E2E,
                event,
                action=lambda dest: run_release(self.release_python, "e2e", self.api, event_file, dest),
            )

        for step in (library, release) if index % 2 == 0 else (release, library):
            step()

    def ready_round(self, result: EventResult, event: Event, event_file: Path) -> None:
        """Time the server alone (the poller); then each client's transfer of ready carts; delete the carts.

        curl, the release and the library each fetch the poller's cart of the
        whole event (the library told to ask for one cart): the same cart for
        all.  When the library cut the event into several carts in its last
        end-to-end run, it is also timed on ready carts of those file sets.
        """
        whole = self.time_ready(result, event)
        if whole is None:
            return
        carts = [whole]
        try:
            whole_file = self.ready_file(f"ready-whole-{event.spec.key}", [whole], [event.paths])
            contenders: list[tuple[str, Callable[[Path], ChildRun]]] = [
                (CURL_TAR, lambda dest: curl_tar(whole, dest)),
                (
                    CUR_TRANSFER,
                    lambda dest: run_current(
                        "transfer", self.api, event_file, dest, ready_carts=whole_file, one_cart=True
                    ),
                ),
                (
                    REL_TRANSFER,
                    lambda dest: run_release(
                        self.release_python, "transfer", self.api, event_file, dest, ready_cart=whole
                    ),
                ),
            ]
            own_file = self.stage_library_carts(event, carts)
            if own_file is not None:
                contenders.append(
                    (
                        CUR_TRANSFER_OWN,
                        lambda dest: run_current("transfer", self.api, event_file, dest, ready_carts=own_file),
                    )
                )
            for index in range(self.transfer_runs):
                self.measure(result, CURL_NULL, lambda: curl_null(whole))
                turn = index % len(contenders)  # rotate who goes first
                for name, action in contenders[turn:] + contenders[:turn]:
                    self.download(result, name, event, action=action)
        except ClientError as err:
            result.fail(CUR_TRANSFER_OWN, f"staging the library's carts: {err}")
        finally:
            for cart in carts:
                self.server.delete(cart)

    def stage_library_carts(self, event: Event, carts: list[str]) -> Path | None:
        """Stage carts of the file sets the library cut the event into (None if it made one); note them in ``carts``."""
        record = self.carts_file(event)
        batches: list[list[str]] = json.loads(record.read_text()) if record.exists() else [event.paths]
        if len(batches) < 2:
            return None
        started = time.monotonic()
        urls = self.server.stage_all([event.cart_body(batch) for batch in batches])
        carts.extend(urls)
        print(
            f"bench: {event.spec.label}: the library's {len(urls)} carts staged in {time.monotonic() - started:.1f} s",
            flush=True,
        )
        return self.ready_file(f"ready-{event.spec.key}", urls, batches)

    def ready_file(self, name: str, urls: list[str], batches: list[list[str]]) -> Path:
        """Write the ready carts (each URL with its files) for client_current.py's ``--ready-carts``."""
        path = self.scratch / f"{name}.json"
        path.write_text(json.dumps([{"url": url, "paths": batch} for url, batch in zip(urls, batches)]))
        return path

    def time_ready(self, result: EventResult, event: Event) -> str | None:
        """The poller: time a new cart of the whole event until ready; return its URL (None if it failed)."""
        try:
            cart_url, ready, polls = self.server.create_and_wait(event.cart_body())
        except ClientError as err:
            result.fail(READY, str(err))
            return None
        result.add(READY, ChildRun(seconds=ready, answer={"polls": polls}))
        return cart_url

    def poll_only(self, result: EventResult, event: Event) -> None:
        """Time the server alone on a new cart of the whole event, then delete it."""
        self.server.delete(self.time_ready(result, event))

    # -- single measurements --------------------------------------------------------

    def measure(self, result: EventResult, name: str, action: Callable[[], ChildRun]) -> None:
        """Record one sample of ``action`` (or its failure)."""
        try:
            result.add(name, action())
        except ClientError as err:
            result.fail(name, str(err))

    def download(
        self, result: EventResult, name: str, event: Event, action: Callable[[Path], ChildRun], keep: bool = False
    ) -> ChildRun | None:
        """Run ``action(dest)`` into a fresh folder, check every file, record the sample; clean up unless ``keep``."""
        shutil.rmtree(self.dest, ignore_errors=True)
        self.dest.mkdir(parents=True)
        os.sync()  # nobody pays for writing back the files of the run before
        worker_log = self.stack.log_dir / "worker.log"
        timed = result.workers == 1 and name in (CUR_E2E, REL_E2E)  # the solo worker's share of an e2e run
        since = log_end(worker_log) if timed else 0
        try:
            run = action(self.dest)
            if timed:
                work = worker_time(worker_log, since)
                run.answer["worker"] = {"tasks": work.tasks, "busy": work.busy}
        except ClientError as err:
            result.fail(name, str(err))
            self.server.delete(err.answer.get("cart_url"))
            shutil.rmtree(self.dest, ignore_errors=True)
            return None
        self.server.delete(run.answer.get("cart_url"))  # the release leaves its cart behind
        problems = verify_download(event, self.dest / "data")
        if problems:
            result.fail(name, "wrong download: " + "; ".join(problems[:3]))
            keep = False
        else:
            result.add(name, run)
        if not keep:
            shutil.rmtree(self.dest, ignore_errors=True)
        return None if problems else run

    def rerun(self, result: EventResult, event: Event, event_file: Path) -> None:
        """Re-run the library into the folder its first run filled; check nothing changed; clean up."""
        try:
            run = run_current("rerun", self.api, event_file, self.dest)
        except ClientError as err:
            result.fail(CUR_RERUN, str(err))
        else:
            problems = verify_download(event, self.dest / "data")
            if problems:
                result.fail(CUR_RERUN, "wrong files after the re-run: " + "; ".join(problems[:3]))
            else:
                result.add(CUR_RERUN, run)
        shutil.rmtree(self.dest, ignore_errors=True)

    def check_clean(self, result: EventResult) -> None:
        """Every cart must be gone from the cart volume once an event is done."""
        left = self.stack.cart_count_on_disk()
        if left:
            result.fail("cleanup", f"{left} cart(s) still on the cart volume")


def start_stack(workdir: Path, bin_dir: Path, workers: int, database: str = "postgres") -> CartdStack:
    """Start a stack rooted in ``workdir`` (its archive is kept between stacks on the same workdir)."""
    stack = CartdStack(workdir, bin_dir, workers=workers, database=database)
    stack.start()
    print(
        f"bench: stack with {workers} worker(s) on {database} up in {stack.startup_seconds:.1f} s ({workdir})",
        flush=True,
    )
    return stack


def run_all(args: argparse.Namespace, specs: list[EventSpec], release_python: Path, workdir: Path) -> list[EventResult]:
    """Every event on the solo-worker stack, then the 64 KiB event on a two-worker stack."""
    bin_dir = ensure_stack_venv(default_stack_venv_path())
    transfer_runs = args.transfer_runs if args.transfer_runs is not None else (1 if args.quick else 3)
    scratch = workdir / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    results: list[EventResult] = []
    stack = start_stack(workdir / "stack", bin_dir, workers=1)
    try:
        bench = Bench(stack, release_python, scratch, transfer_runs, args.poll_interval)
        results += [bench.run_event(spec) for spec in specs]
    finally:
        stack.stop()
    many = next((spec for spec in specs if spec.key == "many"), None)
    others = ([(2, "postgres")] if args.workers2 else []) + ([(1, "sqlite")] if args.sqlite else [])
    for workers, database in others if many is not None else []:
        stack = start_stack(workdir / "stack", bin_dir, workers=workers, database=database)
        try:
            bench = Bench(stack, release_python, scratch, transfer_runs, args.poll_interval)
            results.append(bench.run_event(many, workers=workers, database=database))
        finally:
            stack.stop()
    return results


def clean_workdir(workdir: Path, created: bool, keep: bool) -> None:
    """Delete what the run put in ``workdir`` (the folder itself too when the run created it)."""
    if keep:
        print(f"bench: work directory kept: {workdir}", flush=True)
        return
    for path in [workdir] if created else [workdir / "stack", workdir / "scratch"]:
        shutil.rmtree(path, ignore_errors=True)


def command_line(argv: list[str]) -> str:
    """The command that reproduces this run."""
    return " ".join(["python3 dev.py bench", *(shlex.quote(arg) for arg in argv)])


def setup_lines() -> list[str]:
    """The machine and the software measured (taken at the start, as the tree may change during the run)."""
    import pacifica.downloader as library

    stack = ", ".join(req for req in STACK_REQUIREMENTS if req.startswith("pacifica-"))
    return [
        *machine_lines(ROOT, library.__version__, RELEASE_REQUIREMENT.replace("==", " ")),
        f"- stack: {stack}, PostgreSQL, one solo celery worker unless said otherwise; "
        "every client on loopback, each in its own process",
    ]


def header(argv: list[str], started: datetime, seconds: float, setup: list[str]) -> list[str]:
    """The lines above the tables: command, date, duration, then ``setup``."""
    return [
        f"Results of `{command_line(argv)}` (that is, `.venv/bin/python benchmarks/run.py"
        f"{''.join(' ' + shlex.quote(arg) for arg in argv)}`), {started:%Y-%m-%d %H:%M} UTC, "
        f"{seconds / 60:.1f} minutes wall time:",
        "",
        *setup,
    ]


def main(argv: list[str]) -> int:
    """Run the benchmark; print the report; write it into README.md unless told not to."""
    args = parse_args(argv)
    specs = event_specs(args)
    started_at = datetime.now(timezone.utc)
    started = time.monotonic()
    setup = setup_lines()
    release_python = ensure_release_venv(args.release_venv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pacifica-bench-"))
    try:
        results = run_all(args, specs, release_python, workdir)
    finally:
        clean_workdir(workdir, created=args.workdir is None, keep=args.keep_workdir)
    report = render(results, header(argv, started_at, time.monotonic() - started, setup), args.poll_interval)
    print()
    print(report, flush=True)
    if args.readme if args.readme is not None else not args.quick:
        write_readme(HERE / "README.md", report)
        print(f"bench: results written to {HERE / 'README.md'}", flush=True)
    if args.strict and "| FAIL |" in report:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
