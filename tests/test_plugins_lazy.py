"""A plugin that names its device model as "module:Class" (adapters/base.py `ProtocolPlugin.device_model`): the
model is imported by the config loader only, a model that does not import is named like a broken entry point,
and a plugin that gives the class keeps working (tests/test_plugins.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import yaml

from tests.test_plugins import _collector, _env

PLUGIN = '''
from adapters.base import ProtocolPlugin

PLUGIN = ProtocolPlugin(name="lazyproto", device_model="lazyproto.config:LazyDevice", adapter="lazyproto.adapter:LazyAdapter",
                        describe_tag=lambda dev, tag: f"channel {tag.channel}", schemes=("lazy",))
'''

CONFIG = '''
from typing import ClassVar, Literal

from pydantic import Field

from collector.config.base import DeviceBase, EndpointRule, TagBase

open(__file__ + ".imported", "w").close()  # the test sees whether a command imported the model
RULE = EndpointRule(("lazy",), "lazy://host:port", "a lazy endpoint")


class LazyTag(TagBase):
    channel: int = Field(ge=0)


class LazyDevice(DeviceBase):
    endpoint_rule: ClassVar[EndpointRule] = RULE
    protocol: Literal["lazyproto"] = "lazyproto"
    tags: list[LazyTag] = Field(min_length=1)
'''


ADAPTER = '''
from adapters.base import Adapter


class LazyAdapter(Adapter):
    protocol = "lazyproto"

    async def connect(self) -> None:
        return None

    async def read(self) -> list:
        return []

    async def close(self) -> None:
        return None
'''


def _site(tmp_path: Path, config: str) -> Path:
    site = tmp_path / "site"
    (site / "lazyproto").mkdir(parents=True)
    (site / "lazyproto" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (site / "lazyproto" / "config.py").write_text(textwrap.dedent(config))
    (site / "lazyproto" / "adapter.py").write_text(textwrap.dedent(ADAPTER))
    info = site / "lazyproto-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lazyproto\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[shopfloor_collector.protocols]\nlazyproto = lazyproto:PLUGIN\n")
    return site


def _config(tmp_path: Path, protocol: str, endpoint: str, tag: dict[str, object]) -> str:
    path = tmp_path / f"{protocol}.yaml"
    path.write_text(yaml.safe_dump({"site": {"enterprise_id": "e"}, "http": {"enabled": False},
                                    "state_dir": str(tmp_path / "state"),
                                    "devices": [{"id": "d", "protocol": protocol, "endpoint": endpoint,
                                                 "tags": [{"name": "t", **tag}]}]}))
    return str(path)


def test_a_model_named_by_string_is_imported_by_check_and_not_by_verify(tmp_path: Path) -> None:
    site = _site(tmp_path, CONFIG)
    marker = site / "lazyproto" / "config.py.imported"
    chain = tmp_path / "chain.jsonl"
    chain.write_text("", encoding="utf-8")
    done = _collector("verify", str(chain), env=_env(site))
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    done = _collector("check", "--tags", "-c", _config(tmp_path, "lazyproto", "lazy://127.0.0.1:7", {"channel": 3}),
                      env=_env(site))
    assert done.returncode == 0 and "channel 3" in done.stdout, done.stderr
    assert marker.exists()
    bad = _collector("check", "-c", _config(tmp_path, "lazyproto", "tcp://127.0.0.1:7", {"channel": -1}),
                     env=_env(site))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "tcp:// is the endpoint of protocol: modbus" in bad.stderr, bad.stderr  # its schemes, and the others'
    assert "channel" in bad.stderr


def test_a_named_model_that_does_not_import_leaves_the_others_working_and_is_named(tmp_path: Path) -> None:
    site = _site(tmp_path, "raise ImportError('needs liblazy.so.1')\n")
    ok = _collector("check", "-c", _config(tmp_path, "modbus", "tcp://127.0.0.1:502", {"register": 40001}),
                    env=_env(site))
    assert ok.returncode == 0 and "OK: 1 devices" in ok.stdout, ok.stderr
    bad = _collector("check", "-c", _config(tmp_path, "lazyproto", "lazy://127.0.0.1:7", {"channel": 3}),
                     env=_env(site))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert ("lazyproto is installed but did not load: lazyproto.config:LazyDevice: ImportError: needs liblazy.so.1"
            in bad.stderr), bad.stderr
