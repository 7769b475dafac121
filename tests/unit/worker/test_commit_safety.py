"""faust must never commit past a command that is still being processed."""

from __future__ import annotations

from paystream_streams.faust_transport import head_is_done


def test_head_in_flight_blocks_the_commit() -> None:
    # committed=10 (next to read); 10 is still in flight, 11..13 are done.
    assert not head_is_done([11, 12, 13], [], committed=10, first_seen=None)


def test_head_done_allows_the_commit() -> None:
    assert head_is_done([10, 11, 13], [], committed=10, first_seen=None)


def test_before_the_first_commit_the_first_seen_record_is_the_head() -> None:
    assert not head_is_done([1, 2, 3], [], committed=None, first_seen=0)
    assert head_is_done([0, 1, 2], [], committed=None, first_seen=0)


def test_a_gap_at_the_head_counts_as_done() -> None:
    # offsets 10..11 do not exist (e.g. transaction markers): faust records them as a gap.
    assert head_is_done([12, 13], [10], committed=10, first_seen=None)


def test_nothing_acked_nothing_to_commit() -> None:
    assert not head_is_done([], [], committed=10, first_seen=None)
