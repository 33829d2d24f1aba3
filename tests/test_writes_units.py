"""Pure parts of write-back: the codec's strict reverse encoding (checked against `struct`), the guards, the
rate limiter, the OPC UA type coercion, request parsing, the audit log's torn-line tolerance, DCMD values."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua

from adapters.modbus.codec import TagCodec
from adapters.opcua.writes import coerce, variant_type
from collector.config import ConfigError, ModbusTag, parse_config
from collector.sinks import sparkplug_b_pb2 as pb
from collector.sinks.sparkplug import metric_value
from collector.writes.audit import AuditLog, read_audit
from collector.writes.config import TagWrite
from collector.writes.guards import RateLimiter, range_problem, type_problem
from collector.writes.service import _same, parse_request


def codec(**kw: Any) -> TagCodec:
    return TagCodec(ModbusTag(name="t", table=kw.pop("table", "holding_register"), address=0, **kw))


def wire(fmt: str, value: Any, order: str) -> list[int]:
    """Registers of a value in a byte order, by struct: A is the most significant byte (docs/config.md)."""
    b = struct.pack(">" + fmt, value)
    pairs = [b[i:i + 2] for i in range(0, len(b), 2)]
    if order == "BADC":
        pairs = [p[::-1] for p in pairs]
    elif order == "CDAB":
        pairs = pairs[::-1]
    elif order == "DCBA":
        pairs = [p[::-1] for p in pairs[::-1]]
    return [p[0] << 8 | p[1] for p in pairs]


@pytest.mark.parametrize(("type_", "fmt", "value"), [
    ("float32", "f", 12.5), ("float32", "f", -3.25), ("int32", "i", -70000), ("uint16", "H", 65535),
    ("int16", "h", -2), ("float64", "d", 1e300), ("uint32", "I", 4_000_000_000),
])
@pytest.mark.parametrize("order", ["ABCD", "BADC", "CDAB", "DCBA"])
def test_encode_write_matches_struct(type_: str, fmt: str, value: Any, order: str) -> None:
    assert codec(type=type_, byte_order=order).encode_write(value) == wire(fmt, value, order)


def test_encode_write_cdab_scaled_and_refusals() -> None:
    c = codec(type="int32", byte_order="CDAB", scale=0.1)
    assert c.encode_write(-12.3) == wire("i", -123, "CDAB")
    with pytest.raises(ValueError, match="whole step"):
        c.encode_write(-12.34)
    with pytest.raises(ValueError, match="outside uint16"):
        codec(type="uint16").encode_write(70000)  # encode_value would clamp it to 65535
    with pytest.raises(ValueError, match="outside int16"):
        codec(type="int16").encode_write(-40000)
    with pytest.raises(ValueError, match="finite number"):
        codec(type="float32").encode_write("12")
    with pytest.raises(ValueError, match="longer"):
        codec(type="string", count=2).encode_write("abcde")
    assert codec(type="bool", table="coil").encode_write(True) == [1]


def test_guards() -> None:
    assert type_problem("float32", True) is not None and type_problem("float32", 1) is None
    assert type_problem("bool", 2) is not None and type_problem("bool", 0) is None
    assert type_problem("string", 3) is not None and type_problem(None, {"a": 1}) is not None
    rule = TagWrite(allowed=True, min=0, max=10)
    assert range_problem(rule, 10) is None and range_problem(rule, 10.01) is not None
    assert range_problem(TagWrite(allowed=[1, 2]), 2) is None
    assert range_problem(TagWrite(allowed=[1, 2]), True) is not None  # True == 1 in Python, not here
    now = [0.0]
    limiter = RateLimiter(lambda: now[0])
    assert [limiter.check(("d", "t"), 2) is None for _ in range(3)] == [True, True, False]
    now[0] = 60.5
    assert limiter.check(("d", "t"), 2) is None


def test_config_refuses_contradictions() -> None:
    base = {"site": {"enterprise_id": "e"}, "devices": [{"id": "d", "protocol": "modbus",
                                                          "endpoint": "tcp://127.0.0.1:1502", "tags": []}]}
    for write, words in [({"allowed": True, "min": 5, "max": 1}, "swap"),
                         ({"allowed": [1], "max": 3}, "not both"), ({"allowed": []}, "allows nothing"),
                         ({"allowed": True, "rate": 1}, "rate")]:
        base["devices"][0]["tags"] = [{"name": "t", "register": 40001, "write": write}]
        with pytest.raises(ConfigError, match=words):
            parse_config(base)
    base["devices"][0]["tags"] = [{"name": "t", "register": 30001, "write": {"allowed": True}}]
    with pytest.raises(ConfigError, match=r"tags\[0\].*input_register is read-only in Modbus"):
        parse_config(base)
    cfg = parse_config({**base, "devices": [{**base["devices"][0], "tags": [{"name": "t", "register": 40001}]}]})
    assert not cfg.writes.enabled and not cfg.devices[0].writes.enabled and not cfg.devices[0].tags[0].write.writable


def test_opcua_coerce() -> None:
    assert variant_type(ua.NodeId(11, 0)) == ua.VariantType.Double
    assert variant_type(ua.NodeId(884, 0)) is None and variant_type(ua.NodeId(11, 2)) is None
    assert coerce(12.5, ua.VariantType.Int32, scale=0.5) == 25
    for value, vt in [(1.5, ua.VariantType.Int32), (300, ua.VariantType.Byte), ("x", ua.VariantType.Double),
                      (1, ua.VariantType.Boolean)]:
        with pytest.raises(ValueError):
            coerce(value, vt)


def test_parse_request_and_audit(tmp_path: Path) -> None:
    assert parse_request("d", b"{", "x", "mqtt").problem is not None
    assert parse_request("d", {"tag": "t"}, "x", "http").problem is not None
    req = parse_request("d", {"id": 7, "tag": "t", "value": 1}, "x", "http")
    assert (req.id, req.tag, req.value, req.problem) == ("7", "t", 1, None)
    log = AuditLog(tmp_path / "w.jsonl")
    log.append({"n": 1})
    log.append({"n": 2})
    with open(tmp_path / "w.jsonl", "ab") as f:
        f.write(b'{"n": 3')  # torn by a crash
    assert [r["n"] for r in read_audit(tmp_path / "w.jsonl")] == [1, 2]
    assert (tmp_path / "w.jsonl").stat().st_mode & 0o777 == 0o600


def test_dcmd_metric_values() -> None:
    p = pb.Payload()
    p.metrics.add(name="a", datatype=3, int_value=(-5) & 0xFFFFFFFF)
    p.metrics.add(name="b", datatype=4, long_value=(-5) & 0xFFFFFFFFFFFFFFFF)
    p.metrics.add(name="c", datatype=7, int_value=4_000_000_000)
    p.metrics.add(name="d", datatype=11, boolean_value=True)
    p.metrics.add(name="e", datatype=12, string_value="O1")
    assert [metric_value(m) for m in p.metrics] == [-5, -5, 4_000_000_000, True, "O1"]


def test_readback_comparison() -> None:
    assert _same(123.25, 123.25, "good") and _same(-12.3, -12.299999999999999, "good")
    assert _same(0.1, 0.10000000149011612, "good")  # a float32 register holds 0.1 this way
    assert not _same(99.0, 100.0, "good") and not _same(100.0, 100.0, "bad_device_exception")
    assert _same(True, True, "good") and not _same(1.0, True, "good") and not _same("O1", "O2", "good")


@pytest.mark.parametrize(("type_", "fmt", "value"), [
    ("INT", "h", -2), ("UINT", "H", 65535), ("DINT", "i", -70000), ("UDINT", "I", 4_000_000_000),
    ("REAL", "f", 12.5), ("LREAL", "d", 1e300), ("SINT", "b", -128), ("LINT", "q", -(2**40)),
])
def test_s7_encode_write_is_big_endian_as_struct(type_: str, fmt: str, value: Any) -> None:
    from adapters.s7.address import parse_address
    from adapters.s7.codec import encode_write as s7_encode

    loc = parse_address({1: "DB1.DBB4", 2: "DB1.DBW4", 4: "DB1.DBD4", 8: "DB1.DBB4"}[struct.calcsize(fmt)], type_)
    assert s7_encode(loc, value) == (4, struct.pack(">" + fmt, value))


def test_s7_encode_write_refuses_what_the_type_cannot_hold() -> None:
    from adapters.s7.address import parse_address
    from adapters.s7.codec import encode_write as s7_encode

    assert s7_encode(parse_address("DB1.DBW0", "INT"), -12.3, scale=0.1) == (0, struct.pack(">h", -123))
    assert s7_encode(parse_address("DB1.DBX2.5"), True) == (2, b"\x01")  # one byte: a bit write
    assert s7_encode(parse_address("DB1.DBB10", "STRING[4]"), "温度") == (11, bytes([4]) + "温度".encode("gbk"))
    assert s7_encode(parse_address("DB1.DBB10", "WSTRING[4]"), "温度") == (12, struct.pack(">H", 2)
                                                                         + "温度".encode("utf-16-be"))
    for address, type_, value, match in [
        ("DB1.DBW0", "INT", 40000, "outside INT"), ("DB1.DBW0", "UINT", -1, "outside UINT"),
        ("DB1.DBW0", "INT", 1.5, "whole number"), ("DB1.DBD0", "REAL", 1e39, "does not fit a REAL"),
        ("DB1.DBX0.0", None, 2, "true/false"), ("DB1.DBB10", "STRING[4]", "温度计", "longer than STRING"),
        ("DB1.DBB10", "STRING[4]", 5, "takes a string"), ("DB1.DBB10", "DTL", 0.0, "not written"),
    ]:
        with pytest.raises(ValueError, match=match):
            s7_encode(parse_address(address, type_), value)
    with pytest.raises(ValueError, match="whole step"):
        s7_encode(parse_address("DB1.DBW0", "INT"), 12.34, scale=0.1)


@pytest.mark.parametrize(("type_", "fmt", "value"), [
    ("INT", "h", -2), ("UINT", "H", 65535), ("DINT", "i", -70000), ("UDINT", "I", 4_000_000_000),
    ("REAL", "f", 12.5), ("LREAL", "d", -1e300),
])
def test_mc_encode_write_is_little_endian_words_as_struct(type_: str, fmt: str, value: Any) -> None:
    from adapters.mc.codec import encode_write as mc_encode

    raw = struct.pack("<" + fmt, value)
    assert mc_encode(type_, value) == list(struct.unpack(f"<{len(raw) // 2}H", raw))


def test_mc_encode_write_refuses_what_the_type_cannot_hold() -> None:
    from adapters.mc.codec import encode_write as mc_encode

    assert mc_encode("INT", -12.3, scale=0.1) == [(-123) & 0xFFFF]
    assert mc_encode("STRING[3]", "ab") == [ord("a") | ord("b") << 8, 0]
    for type_, value, match in [("INT", 40000, "outside INT"), ("UDINT", -1, "outside UDINT"),
                                ("DINT", 0.5, "whole number"), ("BOOL", 2, "true/false"),
                                ("STRING[3]", "abcd", "longer"), ("REAL", "1", "finite number")]:
        with pytest.raises(ValueError, match=match):
            mc_encode(type_, value)


def test_guards_know_the_plc_type_names() -> None:
    assert type_problem("REAL", 1.5) is None and type_problem("STRING[10]", "x") is None
    assert type_problem("BOOL", True) is None and type_problem("WSTRING[4]", "x") is None
    assert type_problem("DINT", "1")[0] == "type_mismatch"  # type: ignore[index]
    assert type_problem("BOOL", 5)[0] == "type_mismatch"  # type: ignore[index]
    assert type_problem("DTL", 1.0) == ("type_mismatch", "a DTL tag cannot be written")
