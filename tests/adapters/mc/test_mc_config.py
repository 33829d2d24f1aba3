"""Validation of `protocol: mc` devices: each malformed address is one clear message naming the tag; the
planner's reads; `collector check --tags` on the sample config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adapters.mc.address import parse_address
from adapters.mc.config import McDevice
from adapters.mc.planner import plan_reads
from collector.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[3]


def errors(tags: list[dict[str, Any]], **device: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config({"site": {"enterprise_id": "t"}, "devices": [
            {"id": "plc", "protocol": "mc", "endpoint": "mc://10.0.0.5:5000", "tags": tags, **device}]})
    return str(info.value).splitlines()


@pytest.mark.parametrize(("address", "type_", "says"), [
    ("D", None, "'D' is not an MC device address; use a device code and number"),
    ("Q100", None, "'Q100' is not an MC device address"),
    ("D12A", None, "'D12A': D (data register) numbers are decimal, '12A' is not"),
    ("X1G", None, "'X1G' is not an MC device address"),
    ("M10.1", None, "'M10.1': M is a bit device, its points have no bits; write M10 alone"),
    ("D100.10", None, "'D100.10' is not an MC device address"),
    ("D100", "BOOL", "D100 is a word: a BOOL picks one of its bits, write D100.0 to D100.F"),
    ("M5", "INT", "M is a bit device: its type must be BOOL"),
    ("D100.3", "REAL", "D100.3 is one bit: its type must be BOOL"),
    ("ZR16777216", None, "the device number is above 16777215"),
    ("D16777215", "DINT", "a DINT at D16777215 runs past device number 16777215"),
])
def test_each_malformed_address_is_one_message_naming_the_tag(address: str, type_: str | None, says: str) -> None:
    tag = {"name": "bad_one", "address": address, **({"type": type_} if type_ else {})}
    lines = errors([{"name": "good", "address": "D0"}, tag])
    assert len(lines) == 1, lines
    assert lines[0].startswith("devices[0].tags[1].address: tag 'bad_one': ")
    assert says in lines[0]


def test_every_bad_tag_is_reported_at_once() -> None:
    lines = errors([{"name": "a", "address": "D1x"}, {"name": "b", "address": "D2"}, {"name": "c", "address": "K4M0"}])
    assert [line.split(": ")[0] for line in lines] == ["devices[0].tags[0].address", "devices[0].tags[2].address"]


def test_bad_types_and_endpoints() -> None:
    line = errors([{"name": "a", "address": "D0", "type": "FLOAT"}])[0]
    assert line.startswith("devices[0].tags[0].type: ") and "'FLOAT' is not an MC tag type; use one of BOOL" in line
    assert line.endswith("did you mean REAL?")
    assert "STRING[1] to STRING[1920]" in errors([{"name": "a", "address": "D0", "type": "STRING"}])[0]
    line = errors([{"name": "a", "address": "D0"}], endpoint="tcp://10.0.0.5:5000")[0]
    assert line.startswith("devices[0].endpoint: ") and "use mc://host:port" in line
    assert "did you mean mc://10.0.0.5:5000?" in errors([{"name": "a", "address": "D0"}], endpoint="10.0.0.5:5000")[0]
    wrong = errors([{"name": "a", "address": "D0"}], protocol="melsec")[0]
    assert "protocol must be" in wrong and "'mc'" in wrong  # among the installed protocols


def test_address_numbering() -> None:
    assert parse_address("X1F").number == 31
    assert parse_address("x1f").number == 31
    assert parse_address("X17", 8).number == 15
    assert parse_address("W10").number == 16
    assert parse_address("B3F").number == 63
    assert parse_address("ZR1000").number == 1000
    assert parse_address("D100.A").bit == 10
    with pytest.raises(ValueError, match="octal, '18' is not"):
        parse_address("X18", 8)


def _device(tags: list[dict[str, Any]], **kw: Any) -> McDevice:
    return McDevice.model_validate({"id": "p", "endpoint": "mc://h:1", "tags": tags, **kw})


def test_planner_joins_per_device_code_within_960_words_and_aligns_bits() -> None:
    tags = [{"name": f"d{i}", "address": f"D{i * 4}", "type": "LREAL"} for i in range(500)]  # D0..D1999
    tags += [{"name": "m17", "address": "M17"}, {"name": "m40", "address": "M40"},
             {"name": "far", "address": "D5000"}, {"name": "bit", "address": "D3.2"}]
    reads = plan_reads(_device(tags, max_gap=32))
    got = [(r.device.name, r.number, r.points, len(r.tags)) for r in reads]
    # 2000 words of D: 960 + 960 + 80; D3.2 rides in the first; M17..M40 is words 1..2 from M16
    assert got == [("D", 0, 960, 241), ("D", 960, 960, 240), ("D", 1920, 80, 20), ("D", 5000, 1, 1),
                   ("M", 16, 2, 2)]
    gaps = plan_reads(_device([{"name": "a", "address": "D0"}, {"name": "b", "address": "D40"}], max_gap=38))
    assert [(r.number, r.points) for r in gaps] == [(0, 1), (40, 1)]
    joined = plan_reads(_device([{"name": "a", "address": "D0"}, {"name": "b", "address": "D40"}], max_gap=39))  # D1..D39
    assert [(r.number, r.points) for r in joined] == [(0, 41)]


def test_check_tags_shows_where_each_tag_is_read() -> None:
    result = subprocess.run([sys.executable, "-m", "collector.cli", "check", "-c", str(ROOT / "adapters/mc/sample.yaml"),
                             "--tags"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "press-01 (mc mc://127.0.0.1:5000)" in lines
    want = {
        "state": "INT      D 100",
        "press_force": "REAL     D 102 .. 103 (2 words)",
        "recipe": "STRING[12] D 110 .. 115 (6 words)",
        "door_closed": "-        D 120 bit 0 (type BOOL by default)",
        "alarm": "-        M point 8 (read in word 0, bit 8) (type BOOL by default)",
        "start_button": "-        X point 0 (read in word 0, bit 0) (type BOOL by default)",
    }
    for name, where in want.items():
        assert any(line.split() == [name, *where.split()] for line in lines), (name, lines)


def test_the_registry_serves_the_mc_plugin() -> None:
    """The entry point `mc` loads `adapters.mc:PLUGIN`: its model, adapter, `check --tags` text and simulator."""
    from adapters.base import Adapter, registry
    from simulators.mc import McServerSim

    plugin = registry.get("mc")
    dev = plugin.device_model.model_validate({"id": "p", "endpoint": "mc://h:1", "tags": [
        {"name": "a", "address": "D10", "type": "DINT"}]})
    assert plugin.name == "mc" and plugin.schemes == ("mc",)
    assert plugin.describe_tag(dev, dev.tags[0]) == "D 10 .. 11 (2 words)"  # type: ignore[attr-defined]
    assert isinstance(plugin.adapter_class()(dev, None), Adapter)
    assert plugin.simulator is not None and isinstance(plugin.simulator(dev), McServerSim)
