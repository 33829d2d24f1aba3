"""Acceptance of the plugin shape (issue 15): a protocol from a package outside adapters/, found through the
entry-point group, works in `check --tags`, `simulate` and `run` (readings reach a private mosquitto) with no
edit to core files; an unknown protocol names the installed ones."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Recorder
from tests.support.broker import MosquittoProcess, free_port

ROOT = Path(__file__).resolve().parents[1]

PLUGIN_SOURCE = '''
"""A protocol no collector knows: a TCP server answers each channel number with 100 + the channel."""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar, Literal

from pydantic import Field

from adapters.base import Adapter, AdapterError, ProtocolPlugin
from collector.config.base import DeviceBase, EndpointRule, TagBase
from collector.model import Quality, Reading

RULE = EndpointRule(("line",), "line://host:port", "a line-counter endpoint")


class LineTag(TagBase):
    channel: int = Field(ge=0)


class LineDevice(DeviceBase):
    endpoint_rule: ClassVar[EndpointRule] = RULE
    protocol: Literal["linecounter"] = "linecounter"
    tags: list[LineTag] = Field(min_length=1)


class LineAdapter(Adapter):
    protocol = "linecounter"

    async def connect(self) -> None:
        ep = self.device.parsed_endpoint
        try:
            self._r, self._w = await asyncio.wait_for(asyncio.open_connection(ep.host, ep.port), 2)
        except (OSError, TimeoutError) as exc:
            raise AdapterError(f"cannot connect: {exc}") from None

    async def read(self) -> list[Reading]:
        now = time.time()
        out = []
        for tag in self.device.tags:
            self._w.write(f"{tag.channel}\\n".encode())
            await self._w.drain()
            line = await asyncio.wait_for(self._r.readline(), 2)
            if not line:
                raise AdapterError("connection closed")
            out.append(Reading(self.device.id, tag.name, float(line), tag.unit, Quality.GOOD, now, now))
        return out

    async def close(self) -> None:
        w = getattr(self, "_w", None)
        if w is not None:
            w.close()


class LineSim:
    def __init__(self, device: Any) -> None:
        self.device = device
        self.server: Any = None

    async def start(self) -> None:
        ep = self.device.parsed_endpoint
        self.server = await asyncio.start_server(self._serve, ep.host, ep.port)

    async def _serve(self, r: Any, w: Any) -> None:
        while line := await r.readline():
            w.write(f"{100 + int(line)}\\n".encode())
            await w.drain()
        w.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


PLUGIN = ProtocolPlugin(name="linecounter", device_model=LineDevice, adapter=LineAdapter,
                        describe_tag=lambda dev, tag: f"channel {tag.channel} (line)", simulator=LineSim,
                        schemes=RULE.schemes)
'''


def _plugin_dir(tmp_path: Path) -> Path:
    """A tiny installed distribution outside this repository: the package and its entry point."""
    site = tmp_path / "site"
    (site / "linecounter").mkdir(parents=True)
    (site / "linecounter" / "__init__.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    info = site / "linecounter_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: linecounter-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[shopfloor_collector.protocols]\nlinecounter = linecounter:PLUGIN\n")
    return site


def _config(tmp_path: Path, mqtt_port: int, sim_port: int, protocol: str = "linecounter") -> Path:
    data: dict[str, Any] = {
        "site": {"enterprise_id": "plug"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}", "topic_root": "plugtest/{enterprise}"},
        "http": {"enabled": False},
        "state_dir": str(tmp_path / "state"),
        "devices": [{"id": "lc-01", "protocol": protocol, "endpoint": f"line://127.0.0.1:{sim_port}",
                     "interval": 0.2, "tags": [{"name": "count", "channel": 7}]}],
    }
    path = tmp_path / "plug.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _env(site: Path | None) -> dict[str, str]:
    paths = [str(ROOT)] + ([str(site)] if site is not None else [])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _collector(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_an_outside_protocol_is_checked_and_described(tmp_path: Path) -> None:
    site = _plugin_dir(tmp_path)
    path = _config(tmp_path, free_port(), free_port()).rename(tmp_path / "described.yaml")
    unknown = _config(tmp_path, 1883, 1, "linecount")
    with ThreadPoolExecutor(3) as pool:  # three processes at once: most of each is the interpreter starting
        done_f = pool.submit(_collector, "check", "--tags", "-c", str(path), env=_env(site))
        bare_f = pool.submit(_collector, "check", "-c", str(path), env=_env(None))
        wrong_f = pool.submit(_collector, "check", "-c", str(unknown), env=_env(site))
        done, bare, wrong = done_f.result(), bare_f.result(), wrong_f.result()
    assert done.returncode == 0, done.stderr
    assert "lc-01 (linecounter line://127.0.0.1:" in done.stdout
    assert "count" in done.stdout and "channel 7 (line)" in done.stdout
    # without the package the same file is a config error that names the installed protocols
    assert bare.returncode == 2 and "Traceback" not in bare.stderr
    assert "devices[0]: protocol must be" in bare.stderr and "(the installed protocols)" in bare.stderr
    assert all(f"'{name}'" in bare.stderr for name in ("modbus", "opcua", "s7", "mc"))
    # with it, an unknown protocol lists it among the installed ones
    assert wrong.returncode == 2 and "'linecounter'" in wrong.stderr


def test_an_outside_protocol_is_simulated_and_run(tmp_path: Path, broker: MosquittoProcess) -> None:
    site = _plugin_dir(tmp_path)
    path = _config(tmp_path, broker.port, free_port())
    env = _env(site)
    sim = subprocess.Popen([sys.executable, "-m", "collector.cli", "simulate", "-c", str(path)], env=env,
                           stdout=subprocess.PIPE, text=True)
    rec = Recorder(broker.host, broker.port, "plugtest/plug/#")
    run: subprocess.Popen[str] | None = None
    try:
        assert sim.stdout is not None
        head = "".join(sim.stdout.readline() for _ in range(2))
        assert "serving lc-01" in head and "linecounter" in head and "ready" in head
        run = subprocess.Popen([sys.executable, "-m", "collector.cli", "run", "-c", str(path)], env=env,
                               stderr=subprocess.PIPE, text=True)
        asyncio.run(rec.wait_for(lambda: len(rec.on("/devices/lc-01/data")) >= 2, 30, "linecounter data"))
        tags = rec.on("/devices/lc-01/data")[-1].json()["tags"]
        assert tags["count"]["value"] == 107.0 and tags["count"]["quality"] == "good"
        run.send_signal(signal.SIGTERM)
        assert run.wait(15) == 0
    finally:
        rec.close()
        if run is not None and run.poll() is None:
            run.kill()
        sim.send_signal(signal.SIGINT)
        assert sim.wait(15) == 0


def test_an_endpoint_of_another_protocol_names_that_protocol() -> None:
    """Each plugin's `schemes`: a Modbus device given an OPC UA URL is most likely a wrong `protocol:`."""
    from collector.config import ConfigError, parse_config

    data = {"site": {"enterprise_id": "e"}, "devices": [
        {"id": "a", "protocol": "modbus", "endpoint": "opc.tcp://127.0.0.1:4840", "tags": [{"name": "t",
                                                                                          "register": 40001}]},
        {"id": "b", "protocol": "opcua", "endpoint": "tcp://127.0.0.1:502", "tags": [{"name": "t", "node": "i=1"}]}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert [line.rsplit("; ", 1)[-1] for line in caught.value.lines] == [
        "opc.tcp:// is the endpoint of protocol: opcua", "tcp:// is the endpoint of protocol: modbus"]


def test_a_broken_plugin_leaves_the_others_working_and_is_named(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "brokenproto").mkdir(parents=True)
    (site / "brokenproto" / "__init__.py").write_text("raise ImportError('needs libfoo.so.3')\n")
    info = site / "brokenproto-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenproto\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[shopfloor_collector.protocols]\nbrokenproto = brokenproto:PLUGIN\n")
    modbus = tmp_path / "modbus.yaml"
    modbus.write_text(yaml.safe_dump({"site": {"enterprise_id": "e"}, "http": {"enabled": False},
                                      "state_dir": str(tmp_path / "state"), "devices": [
        {"id": "m", "protocol": "modbus", "endpoint": "tcp://127.0.0.1:502", "tags": [{"name": "t",
                                                                                      "register": 40001}]}]}))
    ok = _collector("check", "-c", str(modbus), env=_env(site))
    assert ok.returncode == 0 and "OK: 1 devices" in ok.stdout, ok.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(modbus.read_text().replace("protocol: modbus", "protocol: brokenproto"))
    bad = _collector("check", "-c", str(broken), env=_env(site))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "brokenproto is installed but did not load: brokenproto:PLUGIN: ImportError: needs libfoo.so.3" \
        in bad.stderr


def test_simulate_refuses_a_protocol_without_a_simulator(tmp_path: Path) -> None:
    """The Workshop used to leave an unknown protocol out silently."""
    site = _plugin_dir(tmp_path)
    source = site / "linecounter" / "__init__.py"
    source.write_text(source.read_text().replace("simulator=LineSim,", "simulator=None,"))
    path = _config(tmp_path, free_port(), free_port())
    done = _collector("simulate", "-c", str(path), env=_env(site))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "device 'lc-01': protocol linecounter has no simulator" in done.stderr


def test_a_protocol_library_is_imported_only_for_a_device_that_uses_it() -> None:
    """Plugins name their adapter as "module:Class" (adapters/base.py `adapter_class`): parsing a config and
    building a Modbus adapter loads neither asyncua nor python-snap7 nor another protocol's adapter module."""
    code = textwrap.dedent('''
        import sys
        from adapters.base import AdapterContext, create_adapter, registry
        from collector.config import parse_config
        cfg = parse_config({"site": {"enterprise_id": "e"}, "devices": [{"id": "m", "protocol": "modbus",
                            "endpoint": "tcp://127.0.0.1:1502", "tags": [{"name": "t", "register": 40001}]}]})
        assert sorted(registry.names()) == ["mc", "modbus", "opcua", "s7"], registry.names()
        before = {m for m in ("asyncua", "snap7", "adapters.opcua.adapter", "adapters.s7.adapter",
                              "adapters.mc.adapter", "adapters.modbus.adapter") if m in sys.modules}
        adapter = create_adapter(cfg.devices[0], AdapterContext())
        after = {m for m in ("asyncua", "snap7", "adapters.opcua.adapter", "adapters.s7.adapter",
                             "adapters.mc.adapter", "adapters.modbus.adapter") if m in sys.modules}
        print(type(adapter).__name__, sorted(before), sorted(after))
    ''')
    done = subprocess.run([sys.executable, "-c", code], env=_env(None), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(None, 1) == ["ModbusAdapter", "[] ['adapters.modbus.adapter']\n"]


def test_a_protocol_whose_adapter_does_not_import_is_a_check_error(tmp_path: Path) -> None:
    """The adapter is imported for the protocols a config uses (collector/preflight.py `adapter_problems`):
    a missing protocol library is named by `check` (and stops `run`), not found by a device task later."""
    site = _plugin_dir(tmp_path)
    init = site / "linecounter" / "__init__.py"
    init.write_text(init.read_text().replace("adapter=LineAdapter", 'adapter="linecounter.gone:LineAdapter"'))
    done = _collector("check", "-c", str(_config(tmp_path, free_port(), free_port())), env=_env(site))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert ("devices[0]: protocol linecounter: its adapter does not load (ModuleNotFoundError: No module named "
            "'linecounter.gone')") in done.stderr
