"""S7 config validation: each malformed address gives one clear message naming the tag; `check --tags`
shows where each tag is read; endpoint and family defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.s7.address import parse_address
from adapters.s7.config import S7Device
from collector.config import ConfigError, parse_config


def config(tags: list[dict[str, Any]], endpoint: str = "s7://192.168.0.10", **extra: Any) -> dict[str, Any]:
    return {"site": {"enterprise_id": "e"},
            "devices": [{"id": "plc1", "protocol": "s7", "endpoint": endpoint, "tags": tags, **extra}]}


def errors(tags: list[dict[str, Any]], **kw: Any) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(config(tags, **kw))
    return exc.value.lines


MALFORMED = [
    ("DB10.DBQ4", None, "is not an S7 address; use DB<n>.DBX<byte>.<bit>"),
    ("DB10,X0.3", None, "is not an S7 address"),  # nodeS7 syntax
    ("%DB10.DBD4:REAL", None, "is not an S7 address"),  # PLC4X syntax
    ("MW", None, "is not an S7 address"),
    ("M10.8", None, "the bit after the byte is 0..7"),
    ("DB0.DBW0", None, "DB numbers run from 1 to 65535"),
    ("DB70000.DBW0", None, "DB numbers run from 1 to 65535"),
    ("MW20", "REAL", "names 2 byte(s) but a REAL is 4: write DB<n>.DBD<byte>"),
    ("DB1.DBD0", "INT", "names 4 byte(s) but a INT is 2"),
    ("M10.1", "INT", "is a bit; a INT needs a byte address"),
    ("MW10", "BOOL", "a BOOL is one bit; write it as <byte>.<bit>"),
    ("DB10.DBD20", "LREAL", "starts at a byte address: write DBB/MB/VB<byte>"),
    ("DB10.DBD20", "STRING[2]", "starts at a byte address"),  # 4 bytes, but a STRING is never a D operand
    ("DB10.DBB0", "FLOAT", "type 'FLOAT' is not an S7 type; use one of BOOL"),
    ("DB10.DBB0", "STRING[300]", "an S7 STRING holds 1..254 characters"),
    ("MB2097152", None, "past the last addressable byte"),
]


@pytest.mark.parametrize(("address", "type_", "message"), MALFORMED)
def test_each_malformed_address_gives_one_message_naming_the_tag(address: str, type_: str | None,
                                                                 message: str) -> None:
    tag = {"name": "bad_one", "address": address, **({"type": type_} if type_ else {})}
    lines = errors([{"name": "fine", "address": "DB10.DBW0"}, tag])
    assert len(lines) == 1, lines
    assert lines[0].startswith("devices[0].tags[1]: tag 'bad_one': "), lines[0]
    assert message in lines[0], lines[0]
    assert "Traceback" not in lines[0]


def test_every_bad_tag_is_reported_at_once() -> None:
    lines = errors([{"name": "a", "address": "X1"}, {"name": "b", "address": "DB1.DBW0"},
                    {"name": "c", "address": "MW1", "type": "DINT"}])
    assert [line.split(":")[0] for line in lines] == ["devices[0].tags[0]", "devices[0].tags[2]"]


@pytest.mark.parametrize(("endpoint", "message"), [
    ("tcp://10.0.0.1:102", "is not an S7 endpoint; use s7://host[:102]"),
    ("10.0.0.1", "did you mean s7://10.0.0.1?"),
    ("s7://10.0.0.1?rack=9", "rack=9 must be a number from 0 to 7"),
    ("s7://10.0.0.1?slots=1", "unknown parameter 'slots'"),
    ("s7://10.0.0.1?local_tsap=0x1000", "give both local_tsap and remote_tsap"),
    ("s7://10.0.0.1:99999", "Port out of range"),
])
def test_bad_endpoints_say_the_form(endpoint: str, message: str) -> None:
    lines = errors([{"name": "a", "address": "MW0"}], endpoint=endpoint)
    assert len(lines) == 1 and lines[0].startswith("devices[0].endpoint: ") and message in lines[0], lines


@pytest.mark.parametrize(("family", "endpoint", "connection"), [
    ("s7-300", "s7://h", (0x0100, 0x0102, 0, 2)),
    ("s7-1200", "s7://h", (0x0100, 0x0101, 0, 1)),
    ("s7-1500", "s7://h:1102?rack=0&slot=1", (0x0100, 0x0101, 0, 1)),
    ("s7-400", "s7://h?rack=1&slot=4", (0x0100, 0x0124, 1, 4)),
    ("s7-200smart", "s7://h", (0x1000, 0x0300, 0, 0)),
    ("s7-1200", "s7://h?local_tsap=0x4D57&remote_tsap=0x4D57", (0x4D57, 0x4D57, 0, 0)),
])
def test_rack_slot_and_tsaps(family: str, endpoint: str, connection: tuple[int, int, int, int]) -> None:
    device = parse_config(config([{"name": "a", "address": "MW0"}], endpoint=endpoint, family=family)).devices[0]
    assert isinstance(device, S7Device)
    assert device.connection == connection


def test_v_memory_is_db1_and_german_mnemonics_are_inputs_and_outputs() -> None:
    assert parse_address("VD104", "REAL") == parse_address("DB1.DBD104", "REAL")
    assert parse_address("E0.1") == parse_address("I0.1")
    assert parse_address("AW2", "INT") == parse_address("QW2", "INT")
    assert parse_address("db10.dbx0.3").type == "BOOL"
    assert parse_address("DB10.DBB20", "STRING[20]").size == 22
    assert parse_address("DB10.DBB20", "STRING[1]").size == 3  # any length starts at a byte address
    assert parse_address("DB10.DBB20", "WSTRING").size == 4 + 2 * 254


def test_check_tags_shows_where_each_tag_is_read(tmp_path: Path) -> None:
    cfg = config([{"name": "speed", "address": "DB10.DBD4", "type": "REAL"},
                  {"name": "running", "address": "M10.1"},
                  {"name": "order", "address": "DB10.DBB20", "type": "STRING[20]"},
                  {"name": "count", "address": "VW100", "type": "INT"}])
    path = tmp_path / "s7.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "collector.cli", "check", "--tags", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "plc1 (s7 s7://192.168.0.10)" in lines
    rows = {line.split()[0]: line.split(None, 2)[2] for line in lines if line.startswith("  ")}
    assert rows == {"speed": "DB10 bytes 4..7 (DB10.DBD4 REAL)", "running": "M byte 10 bit 1 (M10.1 BOOL)",
                    "order": "DB10 bytes 20..41 (DB10.DBB20 STRING)", "count": "DB1 bytes 100..101 (VW100 INT)"}


def test_snap7_connect_chatter_stays_out_of_the_log() -> None:
    """python-snap7 logs three INFO lines per (re)connect attempt: below WARNING they are not ours to show."""
    import io
    import logging

    from collector.logs import setup_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("snap7").level)
    buf = io.StringIO()
    try:
        setup_logging("INFO", stream=buf)
        logging.getLogger("snap7.async_client").info("AsyncClient initialized (native async implementation)")
        logging.getLogger("snap7.async_client").warning("Stale packet")
        logging.getLogger("adapters.s7.adapter").info("ours")
    finally:
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        logging.getLogger("snap7").setLevel(saved[2])
    out = buf.getvalue()
    assert "AsyncClient initialized" not in out and "Stale packet" in out and "ours" in out
