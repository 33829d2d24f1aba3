"""`collector check` and the config models: every bad config names its field; good ones load."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from collector.cli import main
from collector.config import ConfigError, load_config, parse_classic_register, parse_config

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "site": {"enterprise_id": "acme", "workshop": "ws1"},
    "devices": [
        {"id": "m1", "protocol": "modbus", "endpoint": "tcp://127.0.0.1:5020",
         "tags": [{"name": "t", "register": 40001, "type": "int16"}]},
        {"id": "c1", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840",
         "tags": [{"name": "s", "node": "ns=2;s=Speed"}]},
    ],
}


def check(tmp_path: Path, data: object) -> subprocess.CompletedProcess[str]:
    """`collector check -c` on data, in this process (the CLI's own main; a subprocess would spend seconds
    importing for each case): exit code, stdout and stderr as a run would give them. An exception other than
    SystemExit propagates and fails the test, as the traceback a user would see."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["check", "-c", str(path)])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(["collector", "check", "-c", str(path)], code, out.getvalue(), err.getvalue())


def mutate(fn: object) -> dict[str, object]:
    import copy

    data = copy.deepcopy(BASE)
    fn(data)  # type: ignore[operator]
    return data


BAD = [
    ("unknown key", lambda d: d["devices"][1].update(intervall=2), "devices[1].intervall", "unknown key"),
    ("bad type", lambda d: d["devices"][0]["tags"][0].update(type="int17"), "devices[0].tags[0].type", "'int16'"),
    ("duplicate id", lambda d: d["devices"][1].update(id="m1"), "devices[1].id", "unique"),
    ("address out of range", lambda d: d["devices"][0]["tags"].append(
        {"name": "far", "table": "holding_register", "address": 65535, "type": "float32"}),
     "devices[0].tags[1].address", "65535"),
    ("missing endpoint", lambda d: d["devices"][0].pop("endpoint"), "devices[0].endpoint", "missing"),
    ("wrong endpoint scheme", lambda d: d["devices"][1].update(endpoint="tcp://x:1"), "devices[1].endpoint",
     "opc.tcp://"),
    ("bad protocol", lambda d: d["devices"][0].update(protocol="profinet"), "devices[0]",
     "'modbus', 'opcua', 'mc' or 's7'"),
    ("bad node id", lambda d: d["devices"][1]["tags"][0].update(node="Speed"), "devices[1].tags[0].node",
     "node id"),
    ("typo in site", lambda d: d["site"].update(enterprize="x"), "site.enterprize", "unknown key"),
    ("asset bound to nothing", lambda d: d.update(assets=[{"id": "a", "device": "nope"}]), "assets[0].device",
     "not a configured device"),
    ("bool in a register without bit", lambda d: d["devices"][0]["tags"].append(
        {"name": "b", "table": "holding_register", "address": 3, "type": "bool"}), "devices[0].tags[1]", "bit"),
]


@pytest.mark.parametrize(("name", "change", "path", "hint"), BAD, ids=[b[0] for b in BAD])
def test_check_rejects_bad_config_naming_the_field(tmp_path: Path, name: str, change: object, path: str,
                                                   hint: str) -> None:
    result = check(tmp_path, mutate(change))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [ln.strip() for ln in result.stderr.splitlines()[1:]]
    assert any(ln.startswith(path + ":") and hint in ln for ln in lines), lines


def test_check_accepts_the_demo_and_shows_registers(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "collector.cli", "check", "-c", str(ROOT / "config/demo.yaml"),
                             "--tags"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "8 devices" in result.stdout and "2 unconnected assets" in result.stdout
    # barrel_temp is 40011: holding register 10 on the wire, a float32 spanning 10..11
    line = next(ln for ln in result.stdout.splitlines() if "barrel_temp" in ln)
    assert "holding_register 10" in line and ".. 11" in line
    # press-01's press_force is D102: a REAL spanning D102..D103
    assert next(ln for ln in result.stdout.splitlines() if "press_force" in ln).split() == [
        "press_force", "REAL", "D", "102", "..", "103", "(2", "words)"]


def test_one_line_per_error_for_several_errors(tmp_path: Path) -> None:
    data = mutate(lambda d: (d["devices"][0].pop("endpoint"), d["devices"][1].update(intervall=1)))
    result = check(tmp_path, data)
    assert result.returncode == 2
    assert "2 error(s)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 3


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("site:\n  enterprise_id: a\ndevices: [\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "line" in exc.value.lines[0]


@pytest.mark.parametrize(("ref", "base", "expected"), [
    (40001, 1, ("holding_register", 0)), ("400001", 1, ("holding_register", 0)), (30010, 1, ("input_register", 9)),
    (10001, 1, ("discrete_input", 0)), ("00001", 1, ("coil", 0)), (40001, 0, ("holding_register", 1)),
    ("465536", 1, ("holding_register", 65535)),
])
def test_classic_register_notation(ref: int | str, base: int, expected: tuple[str, int]) -> None:
    assert parse_classic_register(ref, base) == expected


def test_templates_expand_and_devices_override() -> None:
    data = {
        "site": {"enterprise_id": "acme"},
        "templates": {"meter": {"protocol": "modbus", "defaults": {"byte_order": "CDAB"}, "tags": [
            {"name": "v", "register": 30001, "type": "float32"}, {"name": "i", "register": 30003, "type": "float32"}]}},
        "devices": [
            {"id": "m1", "template": "meter", "endpoint": "tcp://127.0.0.1:1502", "unit_id": 3},
            {"id": "m2", "template": "meter", "endpoint": "tcp://127.0.0.1:1502", "unit_id": 4, "tags": [
                {"name": "i", "scale": 0.1}, {"name": "p", "register": 30005, "type": "int16"}]},
        ],
    }
    cfg = parse_config(data)
    m1, m2 = cfg.devices
    assert m1.byte_order == "CDAB" and m1.unit_id == 3 and [t.name for t in m1.tags] == ["v", "i"]
    assert [t.name for t in m2.tags] == ["v", "i", "p"]
    assert m2.tags[1].scale == 0.1 and m2.tags[1].address == 2  # type: ignore[union-attr]


def test_secrets_are_not_accepted_in_yaml() -> None:
    data = mutate(lambda d: d.update(mqtt={"password": "hunter2"}))
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert exc.value.lines == ["mqtt.password: unknown key; did you mean 'password_file'? See docs/config.md for "
                               "the allowed keys"]


def test_opcua_certificates_follow_the_state_dir_the_collector_uses(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    """Under systemd the state dir comes from COLLECTOR_STATE_DIR, not the YAML: the PKI must live there too."""
    data = {"site": {"enterprise_id": "e"}, "state_dir": "yaml-state", "devices": [
        {"id": "c1", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840",
         "tags": [{"name": "x", "node": "ns=2;s=X"}]},
        {"id": "c2", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:4841", "security": {"pki_dir": "own"},
         "tags": [{"name": "x", "node": "ns=2;s=X"}]}]}
    monkeypatch.delenv("COLLECTOR_STATE_DIR", raising=False)
    assert parse_config(data).devices[0].security.pki_dir == Path("yaml-state/pki")  # type: ignore[union-attr]
    monkeypatch.setenv("COLLECTOR_STATE_DIR", str(tmp_path / "var-lib"))
    cfg = parse_config(data)
    assert cfg.devices[0].security.pki_dir == tmp_path / "var-lib" / "pki"  # type: ignore[union-attr]
    assert cfg.devices[1].security.pki_dir == Path("own")  # type: ignore[union-attr]


def test_repeated_tags_are_validated_once_and_shared_but_errors_keep_their_path() -> None:
    tag = {"name": "speed", "table": "holding_register", "address": 0, "type": "uint16"}
    classic = {"name": "temp", "register": 40011, "type": "int16"}

    def dev(i: int, **extra: object) -> dict[str, object]:
        return {"id": f"m{i}", "protocol": "modbus", "endpoint": f"tcp://127.0.0.1:{1500 + i}",
                "tags": [dict(tag), dict(classic)], **extra}

    cfg = parse_config({"site": {"enterprise_id": "e"}, "devices": [dev(0), dev(1), dev(2, address_base=0)]})
    d0, d1, d2 = cfg.devices
    assert d0.tags[0] is d1.tags[0] is d2.tags[0]  # one object for three devices
    assert d0.tags[1] is d1.tags[1] and d0.tags[1].address == 10  # type: ignore[union-attr]
    assert d2.tags[1] is not d0.tags[1] and d2.tags[1].address == 11  # type: ignore[union-attr]  # its base
    bad = dev(1)
    bad["tags"] = [dict(tag, type="uint17"), dict(classic)]
    with pytest.raises(ConfigError) as err:
        parse_config({"site": {"enterprise_id": "e"}, "devices": [dev(0), bad]})
    assert any(line.startswith("devices[1].tags[0].type") for line in err.value.lines), err.value.lines


def test_the_mqtt_password_never_shows_in_a_printout_of_the_settings() -> None:
    from collector.sinks.mqtt import MqttSettings

    s = MqttSettings(host="h", port=1, topic_root="t", username="u", password="s3cret-pw")
    assert s.password == "s3cret-pw"
    assert "s3cret-pw" not in repr(s) and "s3cret-pw" not in str(s)
    assert "username='u'" in repr(s)
