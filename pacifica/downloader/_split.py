"""Cut the files of a download into carts: in order, within :class:`CartLimits`, small at both ends.

Cartd stages a cart's files one task at a time and, after each file, re-reads
all of the cart's file rows: its cost per file grows with the cart's size.
A large event is therefore cut into several carts, which :mod:`.pipeline`
runs so that their staging overlaps the transfers of the ready ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._records import FileRecord


@dataclass(frozen=True)
class CartLimits:
    """How a download is cut into carts, and how many stage at once.

    * ``max_files=250``: Cartd's cost per file grows with the cart's size;
      250 keeps it near the floor while the per-cart overhead (a few
      requests, two tasks) stays small.
    * ``max_bytes=128 MiB`` (when the event gives sizes): the first cart is
      ready, and its transfer overlaps the others' staging, early on;
      smaller carts add gaps, larger ones lengthen the tail.
    * ``max_staging=1``: carts staging at once.  One Celery worker stages one
      file at a time, so a second cart would only delay the first; raise it
      to the number of Cartd workers.  The next cart is still created while
      the one staging finishes (its second half), so the worker never waits
      for the client between carts.

    The measurements behind these defaults are in ``benchmarks/README.md``.

    >>> CartLimits().max_files
    250
    >>> Downloader(location, url, limits=CartLimits(max_files=1000, max_staging=2))   # doctest: +SKIP
    """

    max_files: int = 250
    max_bytes: int = 128 * 1024 * 1024
    max_staging: int = 1

    def __post_init__(self) -> None:
        """Refuse limits that cannot make progress."""
        for name in ("max_files", "max_bytes", "max_staging"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CartLimits.{name} must be an integer >= 1, got {value!r}")


#: The first and the last cart of a split download hold at most this share of the limits.
EDGE_SHARE = 8


def split_batches(records: list[FileRecord], limits: CartLimits) -> list[list[FileRecord]]:
    """Cut ``records`` into consecutive batches within ``limits`` (a file larger than max_bytes goes alone).

    When more than one batch is needed, the carts at both ends are kept
    small, because there nothing overlaps the server's staging:

    * the first cart holds at most 1/``EDGE_SHARE`` of ``max_files`` and of
      ``max_bytes`` (and at least one file): until one cart is ready the
      client cannot tell how long this server takes per file, so the second
      cart is only created once the first is ready (see :mod:`.scheduler`), and
      a small first cart is ready, and seen ready, soon;
    * the last cart holds as little: its transfer and deletion come after
      the server has finished;
    * the cart before it holds at most half of ``max_bytes``, so that its
      transfer ends while the last cart stages.

    200 × 5 MiB with the default limits: 3, 23 × 7, 21, 12 and 3 files.
    """
    if _fits(records, limits.max_files, limits.max_bytes) == len(records):
        return [records] if records else []
    edge_files, edge_bytes = limits.max_files // EDGE_SHARE, limits.max_bytes // EDGE_SHARE
    head = records[: _fits(records, edge_files, edge_bytes)]
    rest, tail = _split_end(records[len(head) :], edge_files, edge_bytes)
    middle, before_tail = _split_end(rest, limits.max_files, limits.max_bytes // 2)
    ends = [before_tail, tail] if before_tail else [tail]
    return [head] + _even_cut(middle, limits.max_files, limits.max_bytes) + ends


def _split_end(records: list[FileRecord], max_files: int, max_bytes: int) -> tuple[list[FileRecord], list[FileRecord]]:
    """``records`` less its end, and that end: as many last records as fit the limits (at least one, if any)."""
    cut = len(records) - _fits(records[::-1], max_files, max_bytes)
    return records[:cut], records[cut:]


def _fits(records: list[FileRecord], max_files: int, max_bytes: int, start: int = 0) -> int:
    """How many records from ``start`` on fit in ``max_files`` files and ``max_bytes`` bytes (at least one)."""
    count = size = 0
    for record in records[start : start + max(1, max_files)]:  # not islice: it would step over ``start`` records
        size += record.size or 0
        if count and (count >= max_files or size > max_bytes):
            break
        count += 1
    return count


def _even_cut(records: list[FileRecord], max_files: int, max_bytes: int) -> list[list[FileRecord]]:
    """As many batches as :func:`_cut` makes, but of even sizes (no small remainder at the end).

    A cart too short to outlast the server's first task cannot let the next
    cart be created ahead (see :mod:`.scheduler`), so a small cart in the middle
    of a download would cost an idle gap on the server.
    """
    batches = _cut(records, max_files, max_bytes)
    if len(batches) < 2:
        return batches
    count = len(batches)
    total = sum(record.size or 0 for record in records)
    largest = max(record.size or 0 for record in records)
    even = _cut(records, min(max_files, -(-len(records) // count)), min(max_bytes, total // count + largest))
    return even if len(even) <= count else batches


def _cut(records: list[FileRecord], max_files: int, max_bytes: int) -> list[list[FileRecord]]:
    """Consecutive batches of at most ``max_files`` files and ``max_bytes`` bytes (a larger file goes alone)."""
    batches: list[list[FileRecord]] = []
    start = 0
    while start < len(records):
        end = start + _fits(records, max_files, max_bytes, start)
        batches.append(records[start:end])
        start = end
    return batches
