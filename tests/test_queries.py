"""The read-only queries HTTP, /metrics and the views use instead of the parts' attributes:
`Engine.task_stats`, `Outbox.health` and `Outbox.last_seq` (`Pipeline.latest_for`: tests/test_pipeline.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from collector.engine import Engine
from collector.outbox import Outbox
from tests.test_engine import Dead, Good, device


async def test_task_stats_is_a_copy_of_the_task_counters() -> None:
    engine = Engine(lambda dev, r: None, lambda dev, st, why: None)
    for name, factory in (("good", Good), ("dead", Dead)):
        engine.start_device(device(name))
        engine.tasks[name].adapter_factory = factory
    await asyncio.sleep(0.4)
    good, dead = engine.task_stats("good"), engine.task_stats("dead")
    await engine.stop()
    assert good is not None and dead is not None and engine.task_stats("nope") is None
    assert good.mode == "poll" and not good.subscribing and good.polls >= 3 and good.errors == 0
    assert good.readings >= good.polls and good.answered
    assert dead.polls == 0 and dead.errors >= 1 and dead.answered
    with pytest.raises(dataclasses.FrozenInstanceError):
        good.polls = 0  # type: ignore[misc]
    assert engine.running() == []


def test_outbox_health_and_last_seq(tmp_path: Path) -> None:
    clock = [1000.0]
    ob = Outbox(tmp_path / "outbox.db", ["mqtt"], clock=lambda: clock[0], pending_max_bytes=8 * 2**20)
    assert ob.last_seq("m1") == 0
    ob.append("m1", ob.next_seq("m1"), clock[0], None, 1, {"mqtt": b"x"})
    ob.append("m1", ob.next_seq("m1"), clock[0], None, 1, {"mqtt": b"y"})
    ob.flush()
    assert ob.last_seq("m1") == 2 and ob.last_seq("m2") == 0
    h = ob.health()
    assert (h.write_error, h.failing_for, h.path, h.memory_cap) == (None, 0.0, tmp_path / "outbox.db", 8 * 2**20)
    ob.db.close()
    ob.db = sqlite3.connect(f"file:{tmp_path / 'outbox.db'}?mode=ro", uri=True, isolation_level=None)
    ob.append("m1", ob.next_seq("m1"), clock[0], None, 1, {"mqtt": b"z"})
    ob.flush()  # the commit fails: kept in memory
    clock[0] += 7.5
    h = ob.health()
    assert h.write_error is not None and "readonly" in h.write_error and h.failing_for == 7.5
    assert ob.all_stats()["mqtt"]["depth_batches"] == 3
