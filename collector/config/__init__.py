"""The YAML config (pydantic v2 models) and the process settings (pydantic-settings, env `COLLECTOR_*`),
split by the part each section configures:

- `base`: the strict model base, numbers, endpoints, the simulator spec, `TagBase` and `DeviceBase` (what
  every protocol's models build on; a protocol's own models live in adapters/<protocol>/config.py),
- `assets`, `sinks` (MQTT, InfluxDB, outbox), `indicators` (targets, calendar, evidence),
- `secrets` (COLLECTOR_* settings, secret files, the HTTP token policy),
- `root` (`CollectorConfig`, whose device union is built from the installed protocols, and templates),
- `loader` (YAML to config, error lines that name the path the user wrote).

Every name this module exported before the split still imports from here. `root` and `loader` load on first
use (they need the protocol registry, and a protocol's config imports `collector.config.base`); names of a
protocol's own models (`ModbusDevice`, `OpcUaTag`, ...) are looked up in the installed plugins' config
modules, so existing imports keep working without the core naming a protocol.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from collector.config.assets import AssetEntry
from collector.config.base import (
    DEFAULT_PORTS,
    DEFAULT_STATE_WEIGHTS,
    SERIAL_PARAMS,
    SUBPATH,
    AssetFields,
    AssetStatus,
    DeviceBase,
    DigitalBasis,
    Endpoint,
    EndpointRule,
    Integer,
    MachineState,
    Number,
    SimSpec,
    SimulateConfig,
    Strict,
    TagBase,
    Usage,
    parse_endpoint,
    url_with_scheme,
)
from collector.config.indicators import (
    WEEKDAYS,
    CalendarConfig,
    EvidenceConfig,
    IndicatorConfig,
    IndicatorTargets,
    Weekday,
)
from collector.config.secrets import (
    Settings,
    folder_errors,
    http_errors,
    http_token,
    loose_mode,
    read_secret,
    secret_file_problems,
    settings_errors,
)
from collector.config.sinks import TOPIC_PLACEHOLDERS, InfluxConfig, MqttConfig, OutboxConfig, SparkplugConfig
from collector.config.site import HttpConfig, SiteConfig

if TYPE_CHECKING:
    from collector.config.errors import EXIT_BAD_CONFIG, ConfigError, plain_errors
    from collector.config.loader import (
        MAX_PRINTED,
        TYPE_SYNONYMS,
        across_device_errors,
        allowed_keys,
        format_errors,
        format_loc,
        load_config,
        load_config_or_exit,
        near_miss,
        parse_config,
        partial_config,
        print_problems,
        reference_errors,
    )
    from collector.config.root import (
        PROTOCOLS,
        CollectorConfig,
        Device,
        TemplateConfig,
        effective_state_dir,
        expand_templates,
        set_default_pki_dirs,
    )

_LAZY = {
    "collector.config.errors": ("EXIT_BAD_CONFIG", "ConfigError", "plain_errors"),
    "collector.config.loader": ("MAX_PRINTED", "TYPE_SYNONYMS", "across_device_errors", "allowed_keys", "format_errors", "format_loc", "load_config",
                                "load_config_or_exit", "near_miss", "parse_config", "partial_config",
                                "print_problems", "reference_errors"),
    "collector.config.root": ("PROTOCOLS", "CollectorConfig", "Device", "TemplateConfig",
                              "effective_state_dir", "expand_templates", "set_default_pki_dirs"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    """Load `root`/`loader` on first use; a protocol model's name from the plugin that defines it."""
    module = _WHERE.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if name.startswith("__"):
        raise AttributeError(name)
    from adapters.base import registry

    models = registry.load_models()  # each plugin's model, imported now (one that fails is left out, named)
    if name in ("ENDPOINT_SCHEMES", "ENDPOINT_FORMS"):  # were fixed tables; now each plugin's `endpoint_rule`
        rules = {n: getattr(m, "endpoint_rule", None) for n, m in models.items()}
        return {n: (r.schemes if name == "ENDPOINT_SCHEMES" else r.forms) for n, r in rules.items() if r}
    if name == "pki_errors":
        return __getattr__("across_device_errors")

    for model in models.values():
        found = getattr(importlib.import_module(model.__module__), name, None)
        if found is not None:
            globals()[name] = found
            return found
    raise AttributeError(f"module 'collector.config' has no attribute '{name}'")


__all__ = [  # every name this module exported before the split, and the new ones
    "AssetEntry", "AssetFields", "AssetStatus", "CalendarConfig", "CollectorConfig", "ConfigError",
    "DEFAULT_PORTS", "DEFAULT_STATE_WEIGHTS", "Device", "DeviceBase", "DigitalBasis", "EXIT_BAD_CONFIG",
    "Endpoint", "EndpointRule", "EvidenceConfig", "HttpConfig", "IndicatorConfig", "IndicatorTargets",
    "InfluxConfig", "Integer", "MAX_PRINTED", "MachineState", "MqttConfig", "Number", "OutboxConfig",
    "PROTOCOLS", "SERIAL_PARAMS", "plain_errors", "SUBPATH", "Settings", "SimSpec", "SimulateConfig", "SiteConfig",
    "SparkplugConfig", "Strict", "TOPIC_PLACEHOLDERS", "TYPE_SYNONYMS", "TagBase", "TemplateConfig", "Usage",
    "WEEKDAYS", "Weekday", "across_device_errors", "allowed_keys", "effective_state_dir", "expand_templates",
    "folder_errors", "format_errors", "format_loc", "http_errors", "http_token", "load_config",
    "load_config_or_exit", "loose_mode", "near_miss", "parse_config", "parse_endpoint", "partial_config",
    "print_problems", "read_secret", "reference_errors", "secret_file_problems", "set_default_pki_dirs",
    "settings_errors", "url_with_scheme",
]
