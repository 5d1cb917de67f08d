"""How a download is cut into carts: in order, within the limits, small at both ends, even in between."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pacifica.downloader._records import FileRecord
from pacifica.downloader._split import EDGE_SHARE, CartLimits, split_batches

MiB = 1024 * 1024


def records(sizes: list[int | None]) -> list[FileRecord]:
    return [FileRecord(str(index), f"d/{index}", "sha1", "0" * 40, size) for index, size in enumerate(sizes)]


def counts(batches: list[list[FileRecord]]) -> list[int]:
    return [len(batch) for batch in batches]


def test_an_event_that_fits_is_one_cart() -> None:
    assert counts(split_batches(records([1024] * 10), CartLimits())) == [10]
    assert counts(split_batches(records([None] * 250), CartLimits())) == [250]
    assert split_batches([], CartLimits()) == []


def test_big_files_small_first_and_last_carts_and_a_half_cart_before_the_last() -> None:
    # 200 × 5 MiB, 128 MiB carts: the first and last carts hold 16 MiB, the one before the last 64 MiB,
    # and the 182 files between are cut into eight even carts, not seven full ones and a remainder
    assert counts(split_batches(records([5 * MiB] * 200), CartLimits())) == [3] + [23] * 7 + [21, 12, 3]


def test_small_files_are_cut_by_count() -> None:
    assert counts(split_batches(records([64 * 1024] * 2000), CartLimits())) == [31] + [242] * 6 + [236, 250, 31]
    assert counts(split_batches(records([None] * 300), CartLimits())) == [31, 238, 31]


@given(
    st.lists(st.one_of(st.none(), st.integers(0, 3000)), min_size=1, max_size=300),
    st.integers(1, 40),
    st.integers(1, 10_000),
)
def test_every_cut_keeps_the_order_and_the_limits(sizes: list[int | None], max_files: int, max_bytes: int) -> None:
    files = records(sizes)
    limits = CartLimits(max_files=max_files, max_bytes=max_bytes)
    batches = split_batches(files, limits)
    assert [record for batch in batches for record in batch] == files
    assert all(batch for batch in batches)
    for batch in batches:
        assert len(batch) <= max_files
        assert len(batch) == 1 or sum(record.size or 0 for record in batch) <= max_bytes
    if len(batches) > 1:
        for edge in (batches[0], batches[-1]):
            assert len(edge) == 1 or (
                len(edge) <= max_files // EDGE_SHARE
                and sum(record.size or 0 for record in edge) <= max_bytes // EDGE_SHARE
            )
