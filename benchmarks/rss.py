"""Peak memory of the current process, for the client scripts (standard library only)."""

from __future__ import annotations

__all__ = ["peak_rss_kib"]


def peak_rss_kib() -> int | None:
    """This process's peak resident set size in KiB: VmHWM, its own high-water mark since exec.

    Not ``ru_maxrss``: on Linux a child's ``ru_maxrss`` also counts the pages it
    shared with its parent between fork and exec, i.e. the parent's size.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
