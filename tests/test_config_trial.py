"""Field trial findings (issue 13, items 4-8): configs that gave tracebacks, that `check` passed and `run` died
on, or that were accepted silently. Each case runs `collector check` (in-process: an exception would fail the
test just as a traceback would) and asserts the exit code and a message naming the field."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.cli import main

ROOT = Path(__file__).resolve().parents[1]


def base(tmp: Path) -> dict[str, Any]:
    return {
        "site": {"enterprise_id": "acme", "workshop": "ws1"},
        "state_dir": str(tmp / "state"),
        "http": {"enabled": False},
        "devices": [
            {"id": "m1", "protocol": "modbus", "endpoint": "tcp://127.0.0.1:5020",
             "tags": [{"name": "t", "register": 40001, "type": "int16"}]},
            {"id": "c1", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840",
             "tags": [{"name": "s", "node": "ns=2;s=Speed"}]},
        ],
    }


def run_check(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["check", "-c", str(path)])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def check_data(tmp: Path, data: object) -> tuple[int, str, str]:
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return run_check(path)


def check_text(tmp: Path, text: str | bytes) -> tuple[int, str, str]:
    path = tmp / "c.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return run_check(path)


def lines_of(err: str) -> list[str]:
    return [ln.strip() for ln in err.splitlines() if ln.startswith("  ")]


def has(err: str, path: str, *words: str) -> bool:
    return any(ln.startswith(path) and all(w in ln for w in words) for ln in lines_of(err))


def change(tmp: Path, fn: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data = copy.deepcopy(base(tmp))
    fn(data)
    return data


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COLLECTOR_STATE_DIR", "COLLECTOR_MQTT_URL", "COLLECTOR_MQTT_PASSWORD", "COLLECTOR_HTTP_TOKEN"):
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------------------------------ item 4


@pytest.mark.parametrize("root", ["factory/#", "factory/+/line", "#", "factory/{enterprise}/+"])
def test_a_wildcard_topic_root_is_rejected(tmp_path: Path, root: str) -> None:
    code, _, err = check_data(tmp_path, change(tmp_path, lambda d: d.update(mqtt={"topic_root": root})))
    assert code == 2, err
    assert has(err, "mqtt.topic_root:", "wildcard"), err


# ------------------------------------------------------------------------------------------------ item 5


def test_a_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    text = yaml.safe_dump(base(tmp_path), allow_unicode=True) + "# 车间\n"
    code, _, err = check_text(tmp_path, text.encode("gbk"))
    assert code == 2
    assert has(err, "line ", "not UTF-8", "iconv"), err


def test_unknown_topic_placeholder(tmp_path: Path) -> None:
    code, _, err = check_data(tmp_path, change(tmp_path, lambda d: d.update(mqtt={"topic_root": "factory/{plant}"})))
    assert code == 2
    assert has(err, "mqtt.topic_root:", "{plant}", "{enterprise}"), err
    code, _, err = check_data(tmp_path, change(tmp_path, lambda d: d.update(mqtt={"topic_root": "factory/{x"})))
    assert code == 2 and has(err, "mqtt.topic_root:"), err


def test_a_5000_digit_integer(tmp_path: Path) -> None:
    text = yaml.safe_dump(base(tmp_path)) + "outbox:\n  max_bytes: " + "7" * 5000 + "\n"
    code, _, err = check_text(tmp_path, text)
    assert code == 2
    assert has(err, "outbox.max_bytes:", "5000 digits"), err


@pytest.mark.parametrize(("mqtt", "path", "hint"), [
    ({"url": "mqtt://127.0.0.1:99999"}, "mqtt.url:", "1 to 65535"),
    ({"keepalive": 100000}, "mqtt.keepalive:", "65535"),
    ({"password_file": "/nonexistent/mqtt.pw"}, "mqtt.password_file:", "does not exist"),
    ({"url": "mqtts://127.0.0.1:8883", "ca_file": "/nonexistent/ca.pem"}, "mqtt.ca_file:", "does not exist"),
])
def test_what_run_died_on_is_found_by_check(tmp_path: Path, mqtt: dict[str, Any], path: str, hint: str) -> None:
    code, _, err = check_data(tmp_path, change(tmp_path, lambda d: d.update(mqtt=mqtt)))
    assert code == 2, err
    assert has(err, path, hint), err


def test_empty_password_file_and_a_ca_file_that_is_no_certificate(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("\n")
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    code, _, err = check_data(tmp_path, change(tmp_path, lambda d: d.update(mqtt={
        "url": "mqtts://127.0.0.1:8883", "password_file": str(tmp_path / "pw"), "ca_file": str(tmp_path / "ca.pem")})))
    assert code == 2
    assert has(err, "mqtt.password_file:", "first line") and has(err, "mqtt.ca_file:", "PEM"), err


def test_state_dir_that_is_a_file_or_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    code, _, err = check_data(tmp_path, change(tmp_path, lambda d: d.update(state_dir=str(tmp_path / "afile"))))
    assert code == 2 and has(err, "state_dir:", "is a file"), err
    code, _, err = check_data(tmp_path, change(tmp_path, lambda d: d.update(
        state_dir=str(tmp_path / "afile" / "state"))))
    assert code == 2 and has(err, "state_dir:", "a file, not a folder"), err
    unwritable = Path("/sys/shopfloor-collector-state")  # EACCES even for root
    try:
        with tempfile.TemporaryFile(dir="/sys"):
            pytest.skip("/sys is writable here")
    except OSError:
        pass
    code, _, err = check_data(tmp_path, change(tmp_path, lambda d: d.update(state_dir=str(unwritable))))
    assert code == 2 and has(err, "state_dir:", "cannot create", "write access"), err


def test_an_empty_state_dir_is_refused_not_taken_as_the_current_folder(tmp_path: Path) -> None:
    """`state_dir: ""` put the signing key, the outbox and the status store wherever the command ran."""
    code, _, err = check_data(tmp_path, change(tmp_path, lambda d: d.update(state_dir="")))
    assert code == 2 and has(err, "state_dir:", "empty"), err


def test_run_refuses_what_check_refuses_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(change(tmp_path, lambda d: d.update(state_dir=str(tmp_path / "afile")))))
    env = {k: v for k, v in os.environ.items() if k != "COLLECTOR_STATE_DIR"}
    result = subprocess.run([sys.executable, "-m", "collector.cli", "run", "-c", str(path)], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "state_dir:" in result.stderr and "is a file" in result.stderr


# ------------------------------------------------------------------------------------------------ item 6


def _tag(d: dict[str, Any], **tag: Any) -> None:
    d["devices"][0]["tags"].append(tag)


ERRORS: list[tuple[str, Callable[[dict[str, Any]], object], str, tuple[str, ...]]] = [
    ("interval true", lambda d: d["devices"][0].update(interval=True), "devices[0].interval:", ("yes/no",)),
    ("qos true", lambda d: d.update(mqtt={"qos": True}), "mqtt.qos:", ("yes/no",)),
    ("string without count", lambda d: _tag(d, name="sn", register=40100, type="string"), "devices[0].tags[1]:",
     ("'sn'", "count")),
    ("commit_interval 1e-9", lambda d: d.update(outbox={"commit_interval": 1e-9}), "outbox.commit_interval:",
     ("0.005",)),
    ("degrade_for 1e300", lambda d: d["devices"][0].update(degrade_for=1e300), "devices[0].degrade_for:",
     ("86400",)),
    ("timeout inf", lambda d: d["devices"][1].update(timeout=float("inf")), "devices[1].timeout:", ("finite",)),
    ("bool on a holding register without bit", lambda d: _tag(d, name="run", register=40005, type="bool"),
     "devices[0].tags[1]:", ("'run'", "bit")),
    ("coil with bit", lambda d: _tag(d, name="k", table="coil", address=3, type="bool", bit=3),
     "devices[0].tags[1]:", ("'k'", "remove bit")),
    ("int16 with bit", lambda d: _tag(d, name="w", table="holding_register", address=3, type="int16", bit=2),
     "devices[0].tags[1]:", ("'w'", "bit")),
    ("application uris sharing a PKI folder", lambda d: d["devices"].extend(
        {"id": f"s{n}", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{4850 + n}",
         "security": {"mode": "Sign", "policy": "Basic256Sha256", "application_uri": f"urn:c{n}"},
         "tags": [{"name": "x", "node": "ns=2;s=X"}]} for n in (1, 2)), "devices[3].security.application_uri:",
     ("urn:c2", "urn:c1", "pki_dir")),
]


@pytest.mark.parametrize(("name", "fn", "path", "words"), ERRORS, ids=[e[0] for e in ERRORS])
def test_silently_accepted_before_is_an_error_now(tmp_path: Path, name: str, fn: Callable[[dict[str, Any]], object],
                                                  path: str, words: tuple[str, ...]) -> None:
    code, _, err = check_data(tmp_path, change(tmp_path, fn))
    assert code == 2, err
    assert has(err, path, *words), err


def test_duplicate_yaml_keys_and_a_zero_led_register(tmp_path: Path) -> None:
    text = f"""site: {{enterprise_id: acme}}
state_dir: {tmp_path / "state"}
devices:
  - id: m1
    protocol: modbus
    endpoint: tcp://127.0.0.1:5020
    interval: 1
    interval: 5
    tags:
      - {{name: lamp, register: 00010, type: bool}}
"""
    code, _, err = check_text(tmp_path, text)
    assert code == 2
    assert has(err, "devices[0].interval:", "twice", "line 7 and line 8"), err
    assert has(err, "devices[0].tags[0].register:", "octal number 8", 'register: "00010"'), err
    code, _, err = check_text(tmp_path, text.replace("    interval: 5\n", "").replace("00010", '"00010"'))
    assert code == 0, err


WARNINGS: list[tuple[str, Callable[[dict[str, Any]], object], str, tuple[str, ...]]] = [
    ("two float32 overlapping", lambda d: d["devices"][0].update(tags=[
        {"name": "temp1", "register": 40011, "type": "float32"}, {"name": "temp2", "register": 40012,
                                                                   "type": "float32"}]),
     "devices[0].tags[1]:", ("'temp2'", "overlaps", "'temp1'")),
    ("string with DCBA", lambda d: _tag(d, name="sn", register=40100, type="string", count=4, byte_order="DCBA"),
     "devices[0].tags[1].byte_order:", ("'sn'", "BADC")),
    ("int16 with CDAB", lambda d: _tag(d, name="p", register=40200, type="int16", byte_order="CDAB"),
     "devices[0].tags[1].byte_order:", ("'p'", "ABCD")),
    ("two bools on one bit", lambda d: d["devices"][0].update(tags=[
        {"name": "a", "register": 40001, "type": "bool", "bit": 3},
        {"name": "b", "register": 40001, "type": "bool", "bit": 3}]), "devices[0].tags[1]:", ("'b'", "bit 3")),
    ("plain mqtt with a ca_file", lambda d: d.update(mqtt={"ca_file": "/nonexistent/ca.pem"}), "mqtt.ca_file:",
     ("ignored", "mqtts://")),
]


@pytest.mark.parametrize(("name", "fn", "path", "words"), WARNINGS, ids=[w[0] for w in WARNINGS])
def test_legal_but_suspicious_is_a_warning_naming_the_tag(tmp_path: Path, name: str,
                                                          fn: Callable[[dict[str, Any]], object], path: str,
                                                          words: tuple[str, ...]) -> None:
    code, out, err = check_data(tmp_path, change(tmp_path, fn))
    assert code == 0, err
    assert "warning(s)" in err and has(err, path, *words), err
    assert ": OK:" in out


def test_bits_of_a_status_word_and_the_word_itself_are_no_overlap(tmp_path: Path) -> None:
    code, _, err = check_data(tmp_path, change(tmp_path, lambda d: d["devices"][0].update(tags=[
        {"name": "status", "register": 40001, "type": "uint16"},
        {"name": "run", "register": 40001, "type": "bool", "bit": 0},
        {"name": "fault", "register": 40001, "type": "bool", "bit": 1},
        {"name": "speed", "register": 40002, "type": "float32"}])))
    assert code == 0 and "warning" not in err, err


# ------------------------------------------------------------------------------------------------ item 7


def test_all_errors_at_once_with_near_misses(tmp_path: Path) -> None:
    def bad(d: dict[str, Any]) -> None:
        d["devices"][0]["tags"] += [{"name": "t", "register": 40002, "type": "float"}]
        d["devices"][0]["intervall"] = 2
        d["devices"][1]["endpoint"] = "127.0.0.1:4840"
    code, _, err = check_data(tmp_path, change(tmp_path, bad))
    assert code == 2
    assert has(err, "devices[0].tags[1].type:", "did you mean 'float32'?"), err
    assert has(err, "devices[0].tags[1].name:", "'t'", "already used"), err  # in the same run as the others
    assert has(err, "devices[0].intervall:", "did you mean 'interval'?"), err
    endpoint = next(ln for ln in lines_of(err) if ln.startswith("devices[1].endpoint:"))
    assert "opc.tcp://127.0.0.1:4840" in endpoint and "rtu+tcp" not in endpoint and "serial" not in endpoint
    assert "4 error(s)" in err


def test_discover_without_the_scheme_says_use_opc_tcp() -> None:
    result = subprocess.run([sys.executable, "-m", "collector.cli", "discover", "127.0.0.1:48501"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "did you mean opc.tcp://127.0.0.1:48501?" in result.stderr


# ------------------------------------------------------------------------------------------------ item 8


def test_a_huge_config_is_refused_fast(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    with path.open("w") as f:
        f.write(yaml.safe_dump(base(tmp_path)))
        line = "# " + "x" * 1000 + "\n"
        f.write(line * (9 * 1024))
    started = time.monotonic()
    code, _, err = run_check(path)
    assert code == 2 and has(err, "(top level):", "larger than 8 MB"), err
    assert time.monotonic() - started < 5


def test_printed_errors_are_capped(tmp_path: Path) -> None:
    def many(d: dict[str, Any]) -> None:
        d["devices"][0]["tags"] = [{"name": f"t{n}", "register": 40001 + n, "type": "int17"} for n in range(2000)]
    code, _, err = check_data(tmp_path, change(tmp_path, many))
    assert code == 2
    assert "2000 error(s)" in err and "and 1950 more errors not shown" in err
    assert len(err.splitlines()) == 52


def test_a_bad_mqtt_url_from_the_environment_is_found_by_check(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_MQTT_URL", "mqtt://127.0.0.1:99999")  # run died in mqtt_settings()
    code, _, err = check_data(tmp_path, base(tmp_path))
    assert code == 2 and has(err, "COLLECTOR_MQTT_URL", "1 to 65535"), err


def test_an_alias_bomb_is_refused_fast(tmp_path: Path) -> None:
    """Aliases inside a tag's `sim.values` (free-form data) expanded to 9**10 values when the tag was hashed."""
    bombs = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    bombs += [f"&a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, 10)]
    data = base(tmp_path)
    data["devices"][0]["tags"][0]["sim"] = {"kind": "choice", "values": "BOMB"}
    started = time.monotonic()
    code, _, err = check_text(tmp_path, yaml.safe_dump(data).replace("BOMB", "[" + ", ".join(bombs) + "]"))
    assert code == 2 and has(err, "(top level):", "aliases", "2,000,000"), err
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("mqtt", "path"), [({"client_id": "x" * 70000}, "mqtt.client_id:"),
                                            ({"username": "u" * 70000}, "mqtt.username:")])
def test_strings_mqtt_cannot_carry_are_refused(tmp_path: Path, mqtt: dict[str, Any], path: str) -> None:
    """A 70,000-character client id passed check and killed paho's network thread (struct.pack('!H'))."""
    code, _, err = check_data(tmp_path, change(tmp_path, lambda d: d.update(mqtt=mqtt)))
    assert code == 2 and has(err, path, "at most"), err


def test_start_checks_are_reported_with_the_field_errors(tmp_path: Path) -> None:
    """A missing password file and a bad state_dir show up in the same run as a typo elsewhere."""
    (tmp_path / "afile").write_text("x")

    def bad(d: dict[str, Any]) -> None:
        d["devices"][0]["intervall"] = 2
        d["mqtt"] = {"password_file": str(tmp_path / "none.pw")}
        d["state_dir"] = str(tmp_path / "afile")
    code, _, err = check_data(tmp_path, change(tmp_path, bad))
    assert code == 2
    assert has(err, "devices[0].intervall:") and has(err, "mqtt.password_file:", "does not exist"), err
    assert has(err, "state_dir:", "is a file") and "3 error(s)" in err, err


def test_a_bad_collector_variable_is_named_as_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_LOG_FORMAT", "xml")
    code, _, err = check_data(tmp_path, base(tmp_path))
    assert code == 2 and has(err, "COLLECTOR_LOG_FORMAT (env):", "'kv' or 'json'"), err
