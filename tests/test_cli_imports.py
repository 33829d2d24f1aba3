"""What a `collector` command imports: a command loads only the libraries it uses, so `check`, `verify` and
`report` of a Modbus TCP gateway start without asyncua, aiohttp or pymodbus (each costs a start-up of its
own), importing `collector.cli` loads neither the config models nor asyncio (collector/cli.py), and a command
that reads no config (`--version`, `verify`, `hub ...`) loads no config model, no pydantic and no asyncio
(adapters/base.py `ProtocolPlugin.device_model` by name; the commands' modules import what needs pydantic
inside the commands) while `check` still builds the device union of every plugin.

Each case runs in a fresh interpreter and prints which of the watched modules it loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("adapters.modbus.config", "adapters.opcua.config", "adapters.s7.config", "adapters.mc.config",
          "collector.config.root")
WATCHED = ("asyncua", "aiohttp", "pymodbus", "snap7", "pydantic", "asyncio", "collector.config", *MODELS)

PROBE = """
import json, sys
argv = json.loads(sys.argv[1])
if argv:
    from collector.cli import main
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
else:
    import collector.cli
    code = 0
print(json.dumps([code, [m for m in json.loads(sys.argv[2]) if m in sys.modules]]))
"""

MODBUS = '{id: m1, protocol: modbus, endpoint: "tcp://127.0.0.1:1502", tags: [{name: t, register: 40001}]}'
OPCUA = '{id: o1, protocol: opcua, endpoint: "opc.tcp://127.0.0.1:4840", tags: [{name: t, node: "ns=2;s=x"}]}'


def _config(tmp_path: Path, device: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(f"site: {{enterprise_id: e1, workshop: w1}}\nstate_dir: {tmp_path / 'state'}\n"
                    f"devices:\n  - {device}\n", encoding="utf-8")
    return str(path)


def _loaded(tmp_path: Path, *argv: str) -> tuple[int, list[str]]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(WATCHED)], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    code, loaded = json.loads(done.stdout.splitlines()[-1])
    return code, loaded


def test_importing_the_cli_loads_no_config_models_and_no_asyncio(tmp_path: Path) -> None:
    assert _loaded(tmp_path) == (0, [])


def test_check_verify_and_report_of_a_modbus_tcp_gateway_load_no_protocol_or_http_library(tmp_path: Path) -> None:
    cfg = _config(tmp_path, MODBUS)
    chain = tmp_path / "chain.jsonl"
    chain.write_text("", encoding="utf-8")
    libraries = {"asyncua", "aiohttp", "pymodbus", "snap7"}
    for argv in (["check", "-c", cfg], ["verify", str(chain)],
                 ["report", "-c", cfg, "--period", "2026-11", "--format", "json,csv", "--out", str(tmp_path)]):
        code, loaded = _loaded(tmp_path, *argv)
        assert code == 0, argv
        assert libraries.isdisjoint(loaded), (argv, loaded)
        assert ("pydantic" in loaded) == (argv[0] != "verify"), (argv, loaded)  # verify reads no config
    assert (tmp_path / "report-2026-11.json").is_file()


def test_check_of_an_opcua_device_loads_asyncua(tmp_path: Path) -> None:
    """The check above can fail: `check` imports the adapter of each protocol the config uses (preflight)."""
    code, loaded = _loaded(tmp_path, "check", "-c", _config(tmp_path, OPCUA))
    assert code == 0 and "asyncua" in loaded and "aiohttp" not in loaded


def test_version_loads_nothing_watched_and_verify_and_hub_load_no_config_model(tmp_path: Path) -> None:
    """`--version` builds no parser; `verify` and `hub --help` build it, with each plugin's commands (OPC UA's
    `certs`, `discover`) but neither pydantic, asyncio nor a device model, which `check` of a Modbus-only config does load,
    all four (the union is built from every installed plugin, as before)."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(["--version"]), json.dumps(WATCHED)],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("collector "), done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [0, []]
    chain = tmp_path / "chain.jsonl"
    chain.write_text("", encoding="utf-8")
    for argv in (["verify", str(chain)], ["hub", "--help"], ["discover", "--help"]):
        code, loaded = _loaded(tmp_path, *argv)
        assert code == 0, argv
        assert set(MODELS).isdisjoint(loaded) and {"pydantic", "asyncio"}.isdisjoint(loaded), (argv, loaded)
    code, loaded = _loaded(tmp_path, "check", "-c", _config(tmp_path, MODBUS))
    assert code == 0 and set(MODELS) <= set(loaded), loaded
