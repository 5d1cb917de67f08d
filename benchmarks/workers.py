#!/usr/bin/env python3
"""Twenty events on download workers against the same twenty downloaded one after another by one process.

::

    python3 dev.py bench-workers              # 20 events × 50 files × 64 KiB, two rounds
    python benchmarks/workers.py --help

It starts the loopback stack of ``tests/support/cartd_stack.py`` with two Cartd
worker processes (a site that runs download workers runs more than one
Cartd worker), archives the events, and in each round times, side by side:

* **one process**: ``Downloader(location).cloudevent(event)`` for each
  event in turn, in a child process;
* **workers**: the twenty events enqueued at once
  (``pacifica.downloader.tasks.enqueue``) to three download-worker
  processes under two node names (a prefork pool of two children, and a
  second worker of one, as ``tests/support/download_workers.py`` starts them),
  until every result is in.

The order of the two alternates between rounds.  Cartd's worker log gives
the seconds its tasks took during each: with its two processes, half of
that is the floor below which no client gets.  Every download is checked
file by file and removed afterwards; every cart is deleted by the clients.
The ratio (one process ÷ workers) is the speed-up; results go to
``benchmarks/README.md`` under "Download workers" (``--no-readme`` leaves
it alone).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from events import KIB, Event, EventSpec, make_event, verify_download  # noqa: E402
from report import machine_lines  # noqa: E402
from support.cartd_stack import CartdStack, default_stack_venv_path, ensure_stack_venv  # noqa: E402
from support.download_workers import DownloadWorkers  # noqa: E402
from workerlog import log_end, worker_time  # noqa: E402

from pacifica.downloader import __version__  # noqa: E402
from pacifica.downloader.tasks import enqueue  # noqa: E402

FIRST_ID = 500_000
CARTD_WORKERS = 2
SEQUENTIAL = """
import json, sys
from pacifica.downloader import Downloader
events = json.load(open(sys.argv[1]))
down = Downloader(sys.argv[2], sys.argv[3])
for event in events:
    down.cloudevent(event)
"""
START, END = "<!-- workers-results:start -->", "<!-- workers-results:end -->"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20, help="events (default 20)")
    parser.add_argument("--files", type=int, default=50, help="files per event (default 50)")
    parser.add_argument("--size", type=int, default=64 * KIB, help="bytes per file (default 65536)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both ways (default 2)")
    parser.add_argument(
        "--readme",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the results into benchmarks/README.md (default: yes)",
    )
    return parser.parse_args(argv)


def one_process(events: list[Event], location: Path, cart_url: str, workdir: Path) -> float:
    listing = workdir / "events.json"
    listing.write_text(json.dumps([event.cloudevent for event in events]))
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", SEQUENTIAL, str(listing), str(location), cart_url], check=True)
    return time.monotonic() - started


def on_workers(events: list[Event], location: Path, workers: DownloadWorkers) -> float:
    started = time.monotonic()
    results = [enqueue(event.cloudevent, location, celery_app=workers.app) for event in events]
    for result in results:
        result.get(timeout=3600)
    return time.monotonic() - started


def check(events: list[Event], location: Path, how: str) -> None:
    problems = [
        problem
        for event in events
        for problem in verify_download(event, location / "data")
        if not problem.startswith("unexpected")
    ]  # the other events' files share the folder
    if problems:
        raise SystemExit(f"bench-workers: {how}: the download is wrong: {problems[:5]}")
    shutil.rmtree(location)


def write_readme(lines: list[str]) -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    block = "\n".join([START, *lines, END])
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n## Download workers\n\n" + block + "\n"
    readme.write_text(text)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = datetime.now(timezone.utc)
    workdir = Path(tempfile.mkdtemp(prefix="pacifica-bench-workers-"))
    bin_dir = ensure_stack_venv(default_stack_venv_path())
    stack = CartdStack(workdir / "stack", bin_dir, workers=CARTD_WORKERS)
    stack.start()
    workers = DownloadWorkers(stack, workdir)
    timings: dict[str, list[float]] = {"one process": [], "workers": []}
    floors: dict[str, list[float]] = {"one process": [], "workers": []}
    cartd_log = stack.log_dir / "worker.log"
    try:
        specs = [EventSpec(f"w{n:02d}", f"event {n}", args.files, args.size, 1) for n in range(args.events)]
        events = [
            make_event(spec, FIRST_ID + n * 10_000, stack.put_file, stack.archive_url) for n, spec in enumerate(specs)
        ]
        workers.start("pool", concurrency=2)
        workers.start("second", concurrency=1)
        for round_number in range(args.rounds):
            ways = ["one process", "workers"] if round_number % 2 == 0 else ["workers", "one process"]
            for how in ways:
                location = workdir / "downloads"
                since = log_end(cartd_log)
                seconds = (
                    one_process(events, location, stack.cart_url, workdir)
                    if how == "one process"
                    else on_workers(events, location, workers)
                )
                check(events, location, how)
                timings[how].append(seconds)
                floors[how].append(worker_time(cartd_log, since).busy / CARTD_WORKERS)
                print(
                    f"bench-workers: round {round_number + 1}: {how}: {seconds:.2f} s "
                    f"(Cartd's floor {floors[how][-1]:.2f} s)",
                    flush=True,
                )
    finally:
        workers.stop()
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    best = {how: min(values) for how, values in timings.items()}
    lines = [
        f"Run {started:%Y-%m-%d %H:%M} UTC: {args.events} events × {args.files} files × {args.size // KIB} KiB, "
        f"{args.rounds} rounds (best of each); Cartd with 2 worker processes on PostgreSQL",
        "",
        *machine_lines(ROOT, __version__, "itself, one event after another in one process"),
        "",
        "| way | runs (s) | best | Cartd's floor in each run (its task seconds ÷ 2 processes) |",
        "|---|---|---|---|",
        *(
            f"| {how} | {', '.join(f'{value:.2f}' for value in values)} | {best[how]:.2f} s | "
            f"{', '.join(f'{value:.2f}' for value in floors[how])} s |"
            for how, values in timings.items()
        ),
        "",
        f"One process ÷ workers: **{best['one process'] / best['workers']:.2f}×**.",
    ]
    print("\n".join(lines))
    if args.readme:
        write_readme(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
