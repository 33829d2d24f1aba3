"""The sinks as a list: each one's own encoder, the historical flag framed at send time, Sparkplug encoding
from the batch (never from the JSON sink's row), and the list the wiring loops over built from the config."""

from __future__ import annotations

import math
import time
from pathlib import Path

import orjson
import pytest
from google.protobuf.message import DecodeError

from collector.app import Collector
from collector.config import Settings, parse_config
from collector.model import Batch, Reading, Row
from collector.sinks import sparkplug_b_pb2 as pb
from collector.sinks.mqtt import MqttConnection, MqttSettings
from collector.sinks.mqtt_data import data_message, encode_body, encode_data
from collector.sinks.sparkplug import SparkplugSettings, SparkplugSink, encode_batch, stored_values
from tests.test_backbone import demo_on_free_ports


def batch(historical: bool = False) -> Batch:
    readings = [
        Reading("m1", "count", -5, None, "good", 1700000000.123, 1700000000.2),
        Reading("m1", "big", 2**63 + 7, None, "good", 1700000000.123, 1700000000.2),
        Reading("m1", "temp", 21.5, "°C", "good", 1700000000.5, 1700000000.6),
        Reading("m1", "nan", math.nan, "bar", "bad_decode", 1700000000.5, 1700000000.6),
        Reading("m1", "run", True, None, "good", 1700000000.5, 1700000000.6),
        Reading("m1", "prog", 'O100 "historical":false', None, "good", 1700000000.5, 1700000000.6),
        Reading("m1", "axes", [1, 2], None, "good", 1700000000.5, 1700000000.6),
        Reading("m1", "alarm", None, None, "bad_timeout", 1700000000.5, 1700000000.6),
    ]
    return Batch("m1", 42, 1700000001.25, readings, good_ts=1700000001.25, historical=historical)


def row(payload: bytes) -> Row:
    return Row(7, "m1", 42, 1700000001.25, 1700000001.25, 8, payload)


def test_json_row_gets_its_historical_flag_at_send_time_without_touching_the_body() -> None:
    stored = encode_body(batch())
    assert b"historical" not in stored.split(b'"tags"')[0]  # the stored row carries no flag to rewrite
    live, backlog = orjson.loads(data_message(stored, False)), orjson.loads(data_message(stored, True))
    assert live["historical"] is False and backlog["historical"] is True
    assert {k: v for k, v in live.items() if k != "historical"} == {k: v for k, v in backlog.items()
                                                                     if k != "historical"}
    assert live["device"] == "m1" and live["seq"] == 42 and live["ts"] == 1700000001250
    assert live["tags"]["temp"] == {"value": 21.5, "unit": "°C", "quality": "good", "ts": 1700000000500}
    assert live["tags"]["prog"]["value"] == 'O100 "historical":false'
    assert data_message(stored, True) == encode_data(batch(historical=True))  # one encoder, two heads


def test_a_row_stored_by_the_previous_layout_is_still_sent_with_the_right_flag() -> None:
    old = orjson.dumps({"device": "m1", "seq": 1, "ts": 5, "historical": False, "tags": {}})
    assert orjson.loads(data_message(old, True))["historical"] is True
    assert data_message(old, False) == old


def test_sparkplug_stores_its_own_encoding_of_the_batch() -> None:
    b = batch()
    stored = encode_batch(b)
    ts, values = stored_values(stored)
    assert ts == 1700000001250
    got = {tag: (v.value, v.unit, v.quality, v.ts) for tag, v in values.items()}
    assert got == {
        "count": (-5, None, "good", 1700000000123),
        "big": (2**63 + 7, None, "good", 1700000000123),
        "temp": (21.5, "°C", "good", 1700000000500),
        "nan": (None, "bar", "bad_decode", 1700000000500),  # not finite travels as null, as in JSON
        "run": (True, None, "good", 1700000000500),
        "prog": ('O100 "historical":false', None, "good", 1700000000500),
        "axes": ("[1,2]", None, "good", 1700000000500),
        "alarm": (None, None, "bad_timeout", 1700000000500),
    }
    with pytest.raises(DecodeError):
        stored_values(encode_body(b))  # it reads only its own rows, never the JSON sink's


def test_sparkplug_ddata_is_built_from_its_stored_row(tmp_path: Path) -> None:
    conn = MqttConnection(MqttSettings(host="127.0.0.1", port=1, topic_root="t"))
    node = SparkplugSink(conn, SparkplugSettings("g", "n", tmp_path / "sparkplug.json"))
    topic, payload = node.row_message(row(encode_batch(batch())), historical=True) or ("", b"")
    assert topic == "spBv1.0/g/DDATA/n/m1"
    ddata = pb.Payload.FromString(payload)
    assert ddata.timestamp == 1700000001250
    by_alias = {m.alias: m for m in ddata.metrics}
    assert len(by_alias) == 8 and all(m.is_historical and not m.name for m in ddata.metrics)
    temp = by_alias[node.aliases[("m1", "temp")]]
    assert temp.double_value == 21.5 and temp.timestamp == 1700000000500
    assert by_alias[node.aliases[("m1", "count")]].long_value == (-5) & 0xFFFF_FFFF_FFFF_FFFF
    # live: only what changed since this session's birth (which carried every value)
    assert node.row_message(row(encode_batch(batch())), historical=False) is None  # nothing changed
    changed = batch()
    changed.readings[2] = Reading("m1", "temp", 22.25, "°C", "good", 1700000002.0, 1700000002.0)
    _, payload = node.row_message(row(encode_batch(changed)), historical=False) or ("", b"")
    (only,) = pb.Payload.FromString(payload).metrics
    assert only.alias == node.aliases[("m1", "temp")] and only.double_value == 22.25 and not only.is_historical


@pytest.mark.parametrize(("fmt", "influx", "names"), [
    ("json", False, ["mqtt", "evidence"]),
    ("json", True, ["mqtt", "evidence", "influx"]),
    ("sparkplug", True, ["sparkplug", "evidence", "influx"]),
])
def test_the_wiring_loops_over_the_sinks_the_config_asks_for(state_dir: Path, fmt: str, influx: bool,
                                                             names: list[str]) -> None:
    data = demo_on_free_ports(state_dir, 1883)
    data["mqtt"]["format"] = fmt
    if influx:
        data["influx"] = {"url": "http://127.0.0.1:1", "org": "o", "bucket": "b"}
    collector = Collector(parse_config(data), Settings())
    try:
        assert [s.name for s in collector.sinks] == names
        assert list(collector.outbox.queues) == names  # one queue per sink
        assert [s.sink for s in collector.senders] == names
        assert [name for name, _ in collector._encoders] == [n for n in names if n != "evidence"]
        assert collector.sink is collector.sinks[0] and collector.sink.proves_delivery
        assert [s.name for s in collector.sinks if s.proves_delivery] == names[:1]  # 联网率 evidence: MQTT only
    finally:
        collector.outbox.close()
        collector.store.close()


def test_a_queue_the_config_has_no_sink_for_is_kept_and_named(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    from collector.outbox import Outbox

    ob = Outbox(tmp_path / "outbox.db", ["mqtt", "evidence"])
    ob.append("m1", ob.next_seq("m1"), time.time(), None, 1, {"mqtt": b"x"})
    ob.close()
    caplog.set_level("WARNING", logger="collector.outbox")
    ob = Outbox(tmp_path / "outbox.db", ["sparkplug", "evidence"])  # mqtt.format switched
    ob.close()
    assert [r.getMessage() for r in caplog.records if "queue_kept" in r.getMessage()] == [
        "outbox event=queue_kept sink=mqtt batches=1 (no such sink in this config: kept until it has it again)"]
    ob = Outbox(tmp_path / "outbox.db", ["mqtt", "evidence"])  # and back: the row is still there
    assert [r.payload for r in ob.fetch("mqtt", 0, 10)] == [b"x"]
    ob.close()
