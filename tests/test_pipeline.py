"""The pipeline's good-sample rule (INDICATORS.md): a batch holds a good sample when a reading is good and its
source timestamp is still advancing, or stopped no longer than `stale_after` ago."""

from __future__ import annotations

from typing import Any

from collector.model import Batch, Quality, Reading
from collector.pipeline import Pipeline


class Polls:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, float]] = []

    def polled(self, device: str, good: int, total: int, ts: float) -> None:
        self.calls.append((device, good, total, ts))


def make(stale_after: float = 10.0) -> tuple[Pipeline, Polls, list[Batch], list[float]]:
    polls, batches, clock = Polls(), [], [1000.0]
    seqs: dict[str, int] = {}

    def next_seq(device: str) -> int:
        seqs[device] = seqs.get(device, 0) + 1
        return seqs[device]

    p = Pipeline(polls, stale_after, next_seq, clock=lambda: clock[0])  # type: ignore[arg-type]
    p.add_sink(batches.append)
    return p, polls, batches, clock


def r(tag: str, source_ts: float, receive_ts: float, quality: str = Quality.GOOD, value: Any = 1) -> Reading:
    return Reading("d1", tag, value, None, quality, source_ts, receive_ts)


def test_a_value_whose_source_time_stops_turns_stale_after_stale_after() -> None:
    p, polls, batches, clock = make(stale_after=10.0)
    for t in (1000.0, 1005.0, 1010.0, 1011.0, 1020.0):  # source time frozen at 1000 from the first poll on
        clock[0] = t
        p.submit("d1", [r("a", 1000.0, t)])
    assert [b.good_ts is not None for b in batches] == [True, True, True, False, False]
    assert [b.seq for b in batches] == [1, 2, 3, 4, 5]
    clock[0] = 1021.0
    p.submit("d1", [r("a", 1021.0, 1021.0)])  # it moves again: fresh at once
    assert batches[-1].good_ts == 1021.0
    assert [c[1:3] for c in polls.calls] == [(1, 1)] * 6


def test_one_fresh_good_reading_is_enough_and_bad_ones_never_count() -> None:
    p, polls, batches, clock = make(stale_after=5.0)
    p.submit("d1", [r("a", 1.0, 1000.0), r("b", 1.0, 1000.0, Quality.BAD_TIMEOUT, None)])
    clock[0] = 1100.0
    p.submit("d1", [r("a", 1.0, 1100.0), r("b", 2.0, 1100.0, Quality.BAD_TIMEOUT, None)])  # a stale, b bad
    p.submit("d1", [r("a", 1.0, 1100.0), r("b", 3.0, 1100.0)])  # b good and advancing
    assert [b.good_ts for b in batches] == [1000.0, None, 1100.0]
    assert [c[1:3] for c in polls.calls] == [(1, 2), (1, 2), (2, 2)]
    assert p.latest["d1"]["b"].source_ts == 3.0


def test_devices_are_tracked_apart_and_forget_drops_one() -> None:
    p, _, batches, clock = make(stale_after=1.0)
    p.submit("d1", [r("a", 1.0, 1000.0)])
    p.submit("d2", [Reading("d2", "a", 1, None, Quality.GOOD, 1.0, 1000.0)])
    clock[0] = 1002.0
    p.submit("d1", [r("a", 1.0, 1002.0)])
    assert batches[-1].good_ts is None  # d1's a stopped 2 s ago
    p.forget("d1")
    assert "d1" not in p.latest
    p.submit("d1", [r("a", 1.0, 1002.0)])
    assert batches[-1].good_ts == 1002.0  # forgotten: seen for the first time again
    assert p.submit("d1", []) is None


def test_the_state_counts_the_whole_tag_set_not_the_size_of_each_publish() -> None:
    """A subscription publishes what changed (plus its bad tags): the counts stay over all seven tags."""
    p, polls, _batches, _clock = make()
    bad = [r(f"x{i}", 1.0, 1000.0, "bad_NodeIdUnknown", None) for i in range(3)]
    p.submit("d1", [r(f"g{i}", 1.0, 1000.0) for i in range(4)] + bad)  # the first publish: every tag
    p.submit("d1", [r("g0", 2.0, 1001.0), r("g1", 2.0, 1001.0)] + bad)  # two changed, the bad ones along
    p.submit("d1", [r("g2", 3.0, 1002.0)])  # one changed
    p.submit("d1", [r("x0", 3.0, 1003.0)])  # a bad tag turns good
    assert [c[1:3] for c in polls.calls] == [(4, 7), (4, 7), (4, 7), (5, 7)]
