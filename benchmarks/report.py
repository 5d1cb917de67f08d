"""Collect the measurements of each event and turn them into markdown tables and target verdicts.

An :class:`EventResult` keeps every sample of every measurement of one event
(and the first error of any that failed).  :func:`render` prints the tables
from medians; :func:`targets` checks the performance targets; and
:func:`write_readme` puts the whole report between two markers of
``benchmarks/README.md``, leaving the rest of that file alone.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from clients import ChildRun
from events import EventSpec

__all__ = [
    "CURL_NULL",
    "CURL_TAR",
    "CUR_E2E",
    "CUR_E2E_PAR",
    "CUR_RERUN",
    "CUR_TRANSFER",
    "CUR_TRANSFER_OWN",
    "READY",
    "REL_E2E",
    "REL_TRANSFER",
    "EventResult",
    "Target",
    "machine_lines",
    "render",
    "targets",
    "write_readme",
]

# The measurement names.
READY = "server ready (poller)"
CURL_NULL = "curl -o /dev/null"
CURL_TAR = "curl | tar -x"
CUR_TRANSFER = "library transfer"
CUR_TRANSFER_OWN = "library transfer, its own carts"
REL_TRANSFER = "release transfer"
CUR_E2E = "library end to end"
CUR_E2E_PAR = "library end to end, carts staging in parallel"
CUR_RERUN = "library re-run"
REL_E2E = "release end to end"

#: Peak RSS allowed of every process of this library, in MiB.
RSS_LIMIT_MIB = 64.0
START_MARKER = "<!-- results:start -->"
END_MARKER = "<!-- results:end -->"


@dataclass
class EventResult:
    """Every sample of one event on one stack, and what failed."""

    spec: EventSpec
    workers: int = 1
    database: str = "postgres"
    samples: dict[str, list[ChildRun]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The event's row label, with what differs from the default stack (one solo worker, PostgreSQL)."""
        label = self.spec.label if self.workers == 1 else f"{self.spec.label}, {self.workers} workers"
        return label if self.database == "postgres" else f"{label}, Cartd on SQLite"

    @property
    def default_stack(self) -> bool:
        """True on the default stack: one solo worker, PostgreSQL."""
        return self.workers == 1 and self.database == "postgres"

    def add(self, name: str, run: ChildRun) -> None:
        """Record one sample of ``name``."""
        self.samples.setdefault(name, []).append(run)

    def fail(self, name: str, message: str) -> None:
        """Record that ``name`` failed (the first failure of each is kept)."""
        self.errors.setdefault(name, message)
        print(f"bench: {self.label}: {name} FAILED: {message}", flush=True)

    def median(self, name: str) -> float | None:
        """The median seconds of ``name``, or None when it has no successful sample."""
        runs = self.samples.get(name)
        return statistics.median(run.seconds for run in runs) if runs else None

    def count(self, name: str) -> int:
        """How many successful samples ``name`` has."""
        return len(self.samples.get(name, []))

    def peak_rss(self, *names: str) -> float | None:
        """The largest peak RSS, in MiB, over every sample of ``names``."""
        values = [run.max_rss_mib for name in names for run in self.samples.get(name, [])]
        known = [value for value in values if value is not None]
        return max(known) if known else None

    def ok(self, name: str) -> bool:
        """Whether ``name`` ran and never failed."""
        return name not in self.errors and self.count(name) > 0


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing (or the denominator is zero)."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def add(*values: float | None) -> float | None:
    """The sum of ``values``, or None if any is missing."""
    return None if any(value is None for value in values) else sum(value or 0.0 for value in values)


def secs(value: float | None) -> str:
    """Seconds to three significant figures (milliseconds below one second)."""
    if value is None:
        return "–"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def times(value: float | None) -> str:
    """A ratio such as ``2.31×``."""
    return "–" if value is None else (f"{value:.0f}×" if value >= 100 else f"{value:.2f}×")


def mib(value: float | None) -> str:
    """Megabytes (MiB) with one decimal."""
    return "–" if value is None else f"{value:.1f}"


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def runs_cell(result: EventResult, *names: str) -> str:
    """The sample counts of ``names``, e.g. ``5`` or ``5/3``."""
    counts = sorted({result.count(name) for name in names})
    return "/".join(str(count) for count in counts)


def e2e_rows(results: list[EventResult]) -> list[list[str]]:
    """End to end: server readiness, the ideal client, this library, the release, and their ratios."""
    rows = []
    for res in solo(results):
        ideal = add(res.median(READY), res.median(CURL_TAR))
        lib, rel = res.median(CUR_E2E), res.median(REL_E2E)
        cells = [res.label, runs_cell(res, CUR_E2E, REL_E2E), *map(secs, (res.median(READY), ideal, lib, rel))]
        rows.append([*cells, times(ratio(rel, lib)), times(ratio(lib, ideal))])
    return rows


def other_stack_rows(results: list[EventResult]) -> list[list[str]]:
    """End to end on the other stacks: the library with its defaults (and with carts in parallel on several workers)."""
    rows = []
    for res in results:
        if res.default_stack:
            continue
        lib, par, rel = res.median(CUR_E2E), res.median(CUR_E2E_PAR), res.median(REL_E2E)
        names = (CUR_E2E, CUR_E2E_PAR, REL_E2E) if res.workers > 1 else (CUR_E2E, REL_E2E)
        cells = [res.label, runs_cell(res, *names), *map(secs, (res.median(READY), lib, par, rel))]
        rows.append([*cells, times(ratio(rel, lib)), times(ratio(rel, par))])
    return rows


def worker_busy(result: EventResult, name: str) -> tuple[float | None, float | None]:
    """The median seconds Cartd's worker spent in tasks during the runs of ``name``, and the median task count."""
    works = [run.answer["worker"] for run in result.samples.get(name, []) if "worker" in run.answer]
    if not works:
        return None, None
    return statistics.median(work["busy"] for work in works), statistics.median(work["tasks"] for work in works)


def worker_rows(results: list[EventResult]) -> list[list[str]]:
    """End to end against the time Cartd's solo worker spent in tasks meanwhile: the server's share of each run."""
    rows = []
    for res in results:
        if res.workers != 1:
            continue
        lib, rel = res.median(CUR_E2E), res.median(REL_E2E)
        (lib_busy, lib_tasks), (rel_busy, rel_tasks) = worker_busy(res, CUR_E2E), worker_busy(res, REL_E2E)
        if lib_busy is None or rel_busy is None:
            continue
        rows.append(
            [
                res.label,
                runs_cell(res, CUR_E2E, REL_E2E),
                secs(lib),
                f"{secs(lib_busy)} ({lib_tasks:.0f})",
                secs(rel),
                f"{secs(rel_busy)} ({rel_tasks:.0f})",
                times(ratio(rel, lib)),
                times(ratio(rel, lib_busy)),
            ]
        )
    return rows


def solo(results: list[EventResult]) -> list[EventResult]:
    """The results on the default stack (one solo worker, PostgreSQL)."""
    return [res for res in results if res.default_stack]


def transfer_rows(results: list[EventResult]) -> list[list[str]]:
    """Transfer only on a ready cart: curl, curl | tar, this library, the release, and their ratios."""
    rows = []
    for res in solo(results):
        curl, lib, rel = res.median(CURL_TAR), res.median(CUR_TRANSFER), res.median(REL_TRANSFER)
        own = res.median(CUR_TRANSFER_OWN)
        rate = ratio(res.spec.total_bytes / 1e6, lib)
        rows.append(
            [
                res.label,
                runs_cell(res, CURL_TAR, CUR_TRANSFER, REL_TRANSFER),
                secs(res.median(CURL_NULL)),
                secs(curl),
                secs(lib),
                secs(rel),
                "–" if rate is None else f"{rate:.3g}",
                times(ratio(lib, curl)),
                times(ratio(rel, curl)),
                times(ratio(rel, lib)),
                "–" if own is None else f"{secs(own)} ({times(ratio(own, curl))})",
            ]
        )
    return rows


def rerun_rows(results: list[EventResult]) -> list[list[str]]:
    """Re-running a completed event with this library against its first run."""
    rows = []
    for res in solo(results):
        first, again = res.median(CUR_E2E), res.median(CUR_RERUN)
        rows.append([res.label, runs_cell(res, CUR_RERUN), secs(first), secs(again), times(ratio(first, again))])
    return rows


def rss_rows(results: list[EventResult]) -> list[list[str]]:
    """Peak RSS of every client process (its VmHWM), the largest over the runs."""
    return [
        [
            res.label,
            mib(res.peak_rss(CUR_E2E, CUR_E2E_PAR)),
            mib(res.peak_rss(CUR_TRANSFER, CUR_TRANSFER_OWN)),
            mib(res.peak_rss(CUR_RERUN)),
            mib(res.peak_rss(REL_E2E)),
            mib(res.peak_rss(REL_TRANSFER)),
        ]
        for res in results
    ]


@dataclass(frozen=True)
class Target:
    """One performance target and whether it was met."""

    name: str
    measured: str
    passed: bool

    def line(self) -> str:
        """The target as a markdown table row."""
        name = self.name.replace("|", "\\|")
        return f"| {'PASS' if self.passed else 'FAIL'} | {name} | {self.measured} |"


#: What a target measures of an event's results, and what else it needs of them.
Measure = Callable[[EventResult], Optional[float]]
Needs = Callable[[EventResult], bool]


def _check(
    name: str, res: EventResult, measured: float | None, passed: bool, needs: Callable[[EventResult], bool]
) -> Target:
    return Target(f"{res.spec.label}: {name}", times(measured), measured is not None and passed and needs(res))


def at_least(name: str, res: EventResult, value: Measure, limit: float, needs: Needs) -> Target:
    """The target "``value(res)`` ≥ ``limit``", met only when ``needs(res)`` too."""
    measured = value(res)
    return _check(name, res, measured, measured is not None and measured >= limit, needs)


def at_most(name: str, res: EventResult, value: Measure, limit: float, needs: Needs) -> Target:
    """The target "``value(res)`` ≤ ``limit``", met only when ``needs(res)`` too."""
    measured = value(res)
    return _check(name, res, measured, measured is not None and measured <= limit, needs)


def speedup(res: EventResult) -> float | None:
    """How many times faster than the release this library is, end to end."""
    return ratio(res.median(REL_E2E), res.median(CUR_E2E))


def vs_curl(res: EventResult) -> float | None:
    """This library's transfer time over curl | tar's."""
    return ratio(res.median(CUR_TRANSFER), res.median(CURL_TAR))


def rerun_speedup(res: EventResult) -> float | None:
    """How many times faster the re-run is than the first run."""
    return ratio(res.median(CUR_E2E), res.median(CUR_RERUN))


def e2e_ok(res: EventResult) -> bool:
    """Every end-to-end run of this library succeeded, with its defaults."""
    return res.ok(CUR_E2E)


def transfer_ok(res: EventResult) -> bool:
    """Every transfer of this library and of curl | tar succeeded (the library verifies every hash)."""
    return res.ok(CUR_TRANSFER) and res.ok(CURL_TAR)


def rerun_ok(res: EventResult) -> bool:
    """Every re-run succeeded."""
    return res.ok(CUR_RERUN)


#: The targets of each event (by key) on the solo-worker stack.
EVENT_TARGETS: dict[str, list[Callable[[EventResult], Target]]] = {
    "tiny": [lambda res: at_least("≥1.5× faster than the release end to end", res, speedup, 1.5, e2e_ok)],
    "many": [
        lambda res: at_least(
            "succeeds with defaults, ≥1.5× faster than the release end to end", res, speedup, 1.5, e2e_ok
        ),
        lambda res: at_most("transfer within 1.15× of curl | tar, hashes verified", res, vs_curl, 1.15, transfer_ok),
    ],
    "large": [
        lambda res: at_least("≥1.25× faster than the release end to end", res, speedup, 1.25, e2e_ok),
        lambda res: at_most("transfer within 1.10× of curl | tar, hashes verified", res, vs_curl, 1.10, transfer_ok),
    ],
}


def targets(results: list[EventResult]) -> list[Target]:
    """Check the targets of every event that ran, then re-runs and peak memory."""
    found = [check(res) for res in solo(results) for check in EVENT_TARGETS.get(res.spec.key, [])]
    found += [
        at_least("re-run ≥50× faster than the first run", res, rerun_speedup, 50.0, rerun_ok) for res in solo(results)
    ]
    for res in results:
        peak = res.peak_rss(CUR_E2E, CUR_E2E_PAR, CUR_TRANSFER, CUR_TRANSFER_OWN, CUR_RERUN)
        found.append(
            Target(
                f"{res.label}: peak RSS of the library ≤ {RSS_LIMIT_MIB:.0f} MiB",
                f"{mib(peak)} MiB",
                peak is not None and peak <= RSS_LIMIT_MIB,
            )
        )
    return found


def render(results: list[EventResult], header: list[str], poll_interval: float) -> str:
    """The whole report as markdown: the run's header lines, the tables, targets and failures."""
    lines = list(header)
    lines += [
        "",
        "**End to end** (median seconds; the library with its defaults, the release with its timeout "
        f"raised; server ready: the bare poller, a HEAD every {poll_interval * 1000:.0f} ms)",
        "",
    ]
    lines += table(
        [
            "event",
            "runs",
            "server ready",
            "ready + curl\\|tar",
            "library",
            "release 0.4.1",
            "release ÷ library",
            "library ÷ (ready + curl\\|tar)",
        ],
        e2e_rows(results),
    )
    lines += [
        "",
        "**Transfer only**, every contender on the same ready cart of the whole event (median seconds; "
        "MB/s is the library's; runs: successful runs of each, fewer where some failed; last column: the "
        "library on ready carts of the file sets it cut the event into, and its ratio to curl \\| tar)",
        "",
    ]
    lines += table(
        [
            "event",
            "runs",
            "curl -o /dev/null",
            "curl \\| tar -x",
            "library",
            "release 0.4.1",
            "library MB/s",
            "library ÷ curl\\|tar",
            "release ÷ curl\\|tar",
            "release ÷ library",
            "library, its own carts",
        ],
        transfer_rows(results),
    )
    lines += ["", "**Re-run** of a completed event (this library; every file already present and verified)", ""]
    lines += table(["event", "runs", "first run", "re-run", "first ÷ re-run"], rerun_rows(results))
    several = other_stack_rows(results)
    if several:
        lines += [
            "",
            "**Other stacks** (end to end, median seconds; the library with its defaults, and with "
            "as many carts staging at once as there are workers; on SQLite, Cartd's default database, one "
            "solo worker)",
            "",
        ]
        lines += table(
            [
                "event",
                "runs",
                "server ready",
                "library",
                "library, parallel carts",
                "release 0.4.1",
                "release ÷ library",
                "release ÷ library, parallel carts",
            ],
            several,
        )
    busy = worker_rows(results)
    if busy:
        lines += [
            "",
            "**Cartd's worker** during the end-to-end runs on one solo worker (median seconds spent in "
            "tasks, from its log, and the number of tasks): it runs one task at a time, so no client that "
            "stages the same carts can finish sooner; the last column is the release's time over that floor "
            "of the library's carts, a bound no client reaches: the worker also spends 1 to 5 ms between "
            "tasks, and stops for each DELETE while it revokes the cart's tasks",
            "",
        ]
        lines += table(
            [
                "event",
                "runs",
                "library",
                "its worker time (tasks)",
                "release 0.4.1",
                "its worker time (tasks)",
                "release ÷ library",
                "release ÷ library's worker time",
            ],
            busy,
        )
    lines += ["", "**Peak RSS** (MiB, VmHWM of each client process, largest over the runs)", ""]
    lines += table(
        ["event", "library e2e", "library transfer", "library re-run", "release e2e", "release transfer"],
        rss_rows(results),
    )
    lines += ["", "**Targets**", "", "| verdict | target | measured |", "|---|---|---|"]
    lines += [target.line() for target in targets(results)]
    failures = [f"- {res.label}, {name}: {message}" for res in results for name, message in res.errors.items()]
    if failures:
        lines += ["", "**Failures**", ""] + [line.replace("\n", " ") for line in failures]
    return "\n".join(lines) + "\n"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    except OSError:
        pass
    return "RAM unknown"


def _git_revision(root: Path) -> str:
    try:
        revision = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return revision + (" with uncommitted changes" if dirty else "")


def machine_lines(root: Path, library_version: str, release: str) -> list[str]:
    """Describe the machine and the software measured."""
    return [
        f"- machine: {_cpu_model()}, {os.cpu_count()} cores, {_memory()}, {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; pacifica-downloader {library_version} "
        f"(this tree, {_git_revision(root)}) against {release}",
    ]


def write_readme(path: Path, report: str) -> None:
    """Put ``report`` between the results markers of ``path`` (appending the markers if missing)."""
    text = path.read_text() if path.exists() else ""
    block = f"{START_MARKER}\n{report}{END_MARKER}"
    if START_MARKER in text and END_MARKER in text:
        before = text.split(START_MARKER, 1)[0]
        after = text.split(END_MARKER, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)
