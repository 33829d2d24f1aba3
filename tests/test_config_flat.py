"""Flat configs (tags listed on every device) are read one device at a time (collector/yamlfile.py): the
streamed read must give exactly what the whole read gives, data, problems and every message, and a flat config
must load to the same devices as its template equivalent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from collector import yamlfile
from collector.config import ConfigError, load_config
from collector.yamlfile import YamlProblems, decode_config, parse_yaml


def outcome(read: Any, text: str) -> tuple[str, Any]:
    try:
        return "data", read(text)
    except YamlProblems as exc:
        return "problems", exc.lines


def same_as_whole(text: str) -> tuple[str, Any]:
    streamed, whole = outcome(parse_yaml, text), outcome(yamlfile._whole, text)
    assert repr(streamed) == repr(whole), text[:400]  # repr: a recursive structure compares too
    return streamed


def tags(n: int) -> list[dict[str, Any]]:
    return [{"name": f"t{i:03d}", "table": "holding_register", "address": i * 2,
             "type": ("uint16", "float32", "int16")[i % 3], "sim": {"kind": "walk", "min": 0, "max": 100}}
            for i in range(n)]


def device(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"m-{i}", "protocol": "modbus", "endpoint": f"tcp://127.0.0.1:{5020 + i}", "interval": 1.0,
            **extra}


class NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def write(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.dump(cfg, Dumper=NoAliases, sort_keys=False))
    return path


def test_a_flat_config_loads_to_the_devices_of_its_template_equivalent(tmp_path: Path) -> None:
    site = {"site": {"enterprise_id": "e"}, "state_dir": str(tmp_path / "state")}
    listed = tags(60)
    flat = write(tmp_path / "flat.yaml", {**site, "devices": [device(i, tags=listed, max_gap=4) for i in range(4)]})
    templated = write(tmp_path / "tpl.yaml", {
        **site, "templates": {"press": {"protocol": "modbus", "defaults": {"max_gap": 4}, "tags": listed}},
        "devices": [{k: v for k, v in device(i, template="press").items() if k != "protocol"} for i in range(4)]})
    a, b = load_config(flat), load_config(templated)
    assert len(a.devices) == 4 and all(len(d.tags) == 60 for d in a.devices)
    assert [d.model_dump(exclude={"template"}) for d in a.devices] == \
        [d.model_dump(exclude={"template"}) for d in b.devices]
    assert a.model_dump(exclude={"devices", "templates"}) == b.model_dump(exclude={"devices", "templates"})
    assert a.devices[3].tags[59] is a.devices[0].tags[59]  # equal tags share one model, as with a template


def test_a_flat_config_is_read_one_device_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The streamed read takes a plain config on its own; the whole read is never asked."""
    def whole(text: str) -> Any:
        raise AssertionError("read whole")

    monkeypatch.setattr(yamlfile, "_whole", whole)
    cfg = load_config(write(tmp_path / "c.yaml", {"site": {"enterprise_id": "e"}, "state_dir": str(tmp_path),
                                                  "devices": [device(i, tags=tags(5)) for i in range(3)]}))
    assert [len(d.tags) for d in cfg.devices] == [5, 5, 5]


FLAT = yaml.dump({"site": {"enterprise_id": "e"}, "devices": [device(i, tags=tags(3)) for i in range(3)]},
                 Dumper=NoAliases, sort_keys=False)

CASES = {
    "plain": FLAT,
    "empty": "", "comment": "# nothing\n", "scalar": "42\n", "list": "- a\n- b\n", "null": "null\n",
    "two documents": "--- a\n--- b\n", "two mapping documents": "site: {a: 1}\n---\nsite: {b: 2}\n",
    "syntax error in a device": FLAT.replace("  interval: 1.0", "  interval: [1.0", 1),
    "unterminated": FLAT + "key: 'unterminated\n",
    "a tab": FLAT + "\t- tab\n",
    "duplicate key in a device": FLAT.replace("  interval: 1.0\n", "  interval: 1.0\n  interval: 2.0\n", 1),
    "duplicate key at the top": FLAT + "site: {enterprise_id: f}\n",
    "duplicate devices": FLAT + "devices: []\n",
    "octal register": FLAT.replace("    address: 2\n", "    register: 040003\n", 1),
    "long number in a device": FLAT.replace("address: 2\n", "address: " + "9" * 40 + "\n", 1),
    "long numbers in two devices": FLAT.replace("address: 2\n", "address: " + "9" * 40 + "\n"),
    "long number and syntax error later": FLAT.replace("address: 2\n", "address: " + "9" * 40 + "\n", 1)
    + "x: [\n",
    "deep in a device": FLAT.replace("max: 100", "max: " + "[" * 40 + "1" + "]" * 40, 1),
    "deep at the top": FLAT + "extra: " + "[" * 40 + "1" + "]" * 40 + "\n",
    "deep then duplicate": FLAT.replace("max: 100", "max: " + "[" * 40 + "1" + "]" * 40, 1)
    .replace("  interval: 1.0\n", "  interval: 1.0\n  interval: 2.0\n"),
    "alias across devices": "site: {enterprise_id: e}\ndevices:\n- id: a\n  tags: &std\n  - {name: x, address: 1}\n"
    "  - {name: x, address: 1, address: 2}\n- id: b\n  tags: *std\n- id: c\n  tags: *std\n",
    "anchored defaults merged in devices": "base: &b {protocol: modbus, interval: 1}\ndevices:\n"
    "- {<<: *b, id: a}\n- {<<: *b, id: b, interval: 2}\n",
    "merge at the top": "base: &b {site: {enterprise_id: e}}\n<<: *b\ndevices: []\n",
    "anchored devices": "devices: &d\n- {id: a}\nagain: *d\n",
    "tagged devices": "devices: !!seq\n- {id: a}\n",
    "anchored root": "&r {site: {enterprise_id: e}}\n",
    "undefined alias": FLAT + "x: *nope\n",
    "duplicate anchor": "a: &x 1\nb: &x 2\n",
    "recursive": "devices:\n- &d {id: a, self: *d}\n",
    "complex key": "? [a, b]\n: 1\n",
    "complex key in a device": "devices:\n- {? [a, b] : 1, id: x}\n",
    "bad timestamp": FLAT + "when: 2024-13-45\n",
    "quoted keys": FLAT.replace("devices:", "'devices':", 1),
    "devices not a list": "devices: {a: 1}\nsite: {enterprise_id: x}\n",
    "devices null": "site: {enterprise_id: x}\ndevices: null\n",
    "alias bomb in devices": "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]\n" for n in range(1, 6))
    + "devices:\n" + "".join(f"- {{id: d{i}, x: *a5}}\n" for i in range(40)),
    "alias bomb at the top": FLAT + "".join(
        f"x{n}: &x{n} [" + ", ".join([f"*x{n - 1}" if n else "lol"] * 9) + "]\n" for n in range(10)),
    "many problems": "devices:\n" + "".join(f"- {{id: d{i}, a: 1, a: 2, b: 1, b: 2}}\n" for i in range(600)),
    "many problems and aliases": "x: &x [1, 2]\ndevices:\n"
    + "".join(f"- {{id: d{i}, a: 1, a: 2, b: 1, b: *x}}\n" for i in range(600)),
    "unicode": "site: {enterprise_id: e, enterprise_name: 江西恒达针织有限公司}\ndevices: [{id: 设备一}]\n",
}


STREAMED = {"plain", "duplicate key in a device", "octal register", "long number in a device",
            "long numbers in two devices", "deep in a device", "deep at the top", "deep then duplicate",
            "alias across devices", "anchored defaults merged in devices", "anchored devices", "tagged devices",
            "recursive",
            "quoted keys", "devices not a list", "devices null", "alias bomb in devices", "alias bomb at the top",
            "many problems", "many problems and aliases", "unicode"}
"""Cases the streamed read answers on its own (the others it hands to the whole read)."""


@pytest.mark.parametrize("name", list(CASES))
def test_the_streamed_read_gives_what_the_whole_read_gives(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    same_as_whole(CASES[name])
    whole = yamlfile._whole
    asked: list[str] = []

    def counted(text: str) -> Any:
        asked.append(text)
        return whole(text)

    monkeypatch.setattr(yamlfile, "_whole", counted)
    outcome(parse_yaml, CASES[name])
    assert bool(asked) == (name not in STREAMED)


def test_a_problem_in_a_device_names_its_path_and_line() -> None:
    kind, (_, problems) = same_as_whole(CASES["duplicate key in a device"])
    assert kind == "data"
    assert problems == ["devices[0].interval: the key 'interval' is given twice in one mapping (line 7 and line 8);"
                        " YAML would keep only the last: remove one"]
    kind, lines = same_as_whole(CASES["deep in a device"])
    assert kind == "problems" and lines[0].startswith("devices[0].tags[0].sim.max") and "32 levels" in lines[0]


def test_the_hostile_configs_read_the_same_streamed(tmp_path: Path) -> None:
    """One config of every mutation kind of tests/test_config_hostile.py (the seeds it uses first)."""
    import random

    from tests.test_config_hostile import KINDS, SEED, SOURCES, dump, prepared

    seen = 0
    for n, (_, mutate) in enumerate(KINDS):
        folder = tmp_path / f"c{n:02d}"
        folder.mkdir()
        result = mutate(random.Random(SEED + n), prepared(SOURCES[n % 2], folder, 1883), folder)
        try:
            text = decode_config(result if isinstance(result, bytes) else dump(result))
        except YamlProblems:
            continue
        same_as_whole(text)
        seen += 1
    assert seen >= 15  # the rest are not UTF-8 (the encoding mutations): no YAML to read


def test_anchored_objects_stay_shared_across_devices() -> None:
    kind, (data, _) = same_as_whole(CASES["alias across devices"])
    assert data["devices"][1]["tags"] is data["devices"][0]["tags"] is data["devices"][2]["tags"]


def test_a_flat_config_error_still_names_its_field(tmp_path: Path) -> None:
    bad = FLAT.replace("type: float32", "type: real", 1)
    with pytest.raises(ConfigError) as exc:
        load_config(write_text(tmp_path / "bad.yaml", bad))
    assert exc.value.lines == ["devices[0].tags[1].type: Input should be 'bool', 'int16', 'uint16', 'int32', "
                               "'uint32', 'int64', 'uint64', 'float32', 'float64', 'string' or 'raw' (got 'real'); "
                               "did you mean 'float32'?"]


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
