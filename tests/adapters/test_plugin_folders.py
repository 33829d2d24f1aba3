"""Each protocol folder is self-contained (issue 15): a README that names every option of its models, and a
`sample.yaml` that `collector check` accepts and the bundled simulator serves with good values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from adapters.base import AdapterContext, create_adapter, registry
from collector.config import parse_config
from collector.config.base import DeviceBase
from collector.config.root import tag_model
from simulators.workshop import Workshop
from tests.support.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
BUILTIN = ["modbus", "opcua", "s7", "mc"]


@pytest.mark.parametrize("protocol", BUILTIN)
def test_the_readme_names_every_option(protocol: str) -> None:
    plugin = registry.get(protocol)
    text = (ROOT / "adapters" / protocol / "README.md").read_text(encoding="utf-8")
    tag = tag_model(plugin.device_model)
    assert tag is not None
    keys: set[str] = set()
    for model in (plugin.device_model, tag):
        for name, f in model.model_fields.items():
            nested = f.annotation
            if name not in DeviceBase.model_fields and isinstance(nested, type) and issubclass(nested, BaseModel):
                keys |= {f"{name}.{sub}" for sub in nested.model_fields}  # e.g. security.mode
            else:
                keys.add(f.alias or name)
    missing = sorted(k for k in keys if not re.search(rf"`{re.escape(k)}`", text))
    assert missing == []


@pytest.mark.parametrize("protocol", BUILTIN)
async def test_the_sample_is_checked_and_served(protocol: str) -> None:
    data = yaml.safe_load((ROOT / "adapters" / protocol / "sample.yaml").read_text(encoding="utf-8"))
    for dev in data["devices"]:  # never a fixed port in a test
        dev["endpoint"] = re.sub(r":\d+$", f":{free_port()}", dev["endpoint"])
    cfg = parse_config(data)
    workshop = Workshop(cfg)
    await workshop.start()
    try:
        for dev in cfg.devices:
            adapter = create_adapter(dev, AdapterContext())
            await adapter.connect()
            try:
                readings = await adapter.read()
            finally:
                await adapter.close()
            assert [r.tag for r in readings] == [t.name for t in dev.tags]
            assert {r.tag: r.quality for r in readings} == {t.name: "good" for t in dev.tags}
    finally:
        await workshop.stop()
