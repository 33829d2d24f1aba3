"""`make demo-city`'s pieces, cheaply: what it says when a part is missing, and the seeded month that its
collectors close at their start (the whole demo runs in `python -m collector.demo_city --duration 0`)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from collector import demo_city
from collector.app import Collector
from collector.config import Settings, parse_config
from collector.evidence import keys
from collector.indicators import chain


def test_missing_parts_name_the_package_and_the_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no mosquitto here
    from tests.support.broker import free_port

    missing = demo_city.missing_parts(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    assert any("mosquitto is not installed: `apt-get install mosquitto`" in m for m in missing)
    assert any("mosquitto_passwd" in m for m in missing)
    assert any("no PostgreSQL answers" in m and "apt-get install postgresql" in m for m in missing)


def test_the_seeded_month_closes_at_the_collector_start_with_the_seeded_shares(tmp_path: Path) -> None:
    code, name, county, ent, ws, devices = demo_city.CITY[2]  # 秀洲: one device 100 %, one 30 %, one 20 %
    data = demo_city._collector_config(tmp_path, 3, code, name, county, ent, ws, devices, hub_port=1, own_port=2)
    keys.init(tmp_path / "hub")
    (tmp_path / f"pw-{code}").write_text("secret\n")
    state = Path(data["state_dir"])
    month = demo_city.seed_closed_month(state, 10, {d: share for d, _, share in devices})
    assert month.closed(time.time())
    collector = Collector(parse_config(data), Settings())
    records = collector.close_months()
    assert [r["body"]["kind"] for r in chain.read(state / chain.CHAIN_FILE)] == ["key", "monthly_summary"]
    figures = records[0]["body"]["figures"]
    assert (figures["D1"]["numerator"], figures["D1"]["denominator"]) == (2, 3)  # two of three are CNC
    assert (figures["D2"]["numerator"], figures["D2"]["denominator"]) == (1, 3)  # ≥ 80 % online: mill-01 only
    assert collector.outbox.stats("hub")["depth_batches"] == 3  # key record, summary, head: for the hub
    collector.outbox.close()
    collector.store.close()
