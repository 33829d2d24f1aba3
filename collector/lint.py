"""Warnings about a valid config: things that are legal but most often a slip. They never fail `check` or stop
`run`; `check` prints them to stderr and `run` logs them, each with the field path and what to do.

What is an error and what a warning: an error is a setting that cannot work or reads a wrong value for sure
(see collector/config/); a warning is one that can be meant (two tags reading one register as int16 and
uint16) but usually is not (a float32 starting inside another float32).
"""

from __future__ import annotations

from collector.config import CollectorConfig

FAST_POLL = 0.1  # s: faster polling is legal, but few PLCs answer 10 requests a second per tag group
def topic_root_warnings(root: str) -> list[str]:
    lines = []
    if root.startswith("$"):
        lines.append(f"mqtt.topic_root: '{root}' starts with '$': brokers keep such topics for themselves ($SYS) "
                     "and subscribers to '#' do not see them")
    if root.startswith("/") or "//" in root or root.endswith("/"):
        lines.append(f"mqtt.topic_root: '{root}' has an empty level (a leading, doubled or trailing '/'); "
                     "write factory/{enterprise}/{workshop}")
    if any(c.isspace() for c in root):
        lines.append(f"mqtt.topic_root: '{root}' contains a space; many MQTT tools handle that badly")
    return lines


def config_warnings(cfg: CollectorConfig) -> list[str]:
    """Every warning about `cfg`, each starting with the field path."""
    lines = topic_root_warnings(cfg.mqtt.topic_root)
    for i, dev in enumerate(cfg.devices):
        if dev.interval < FAST_POLL:
            lines.append(f"devices[{i}].interval: {dev.interval:g} s polls more than 10 times a second; check "
                         "that the device and the network keep up (0.5 to 5 s is usual)")
        lines += dev.config_warnings(f"devices[{i}]")
    if cfg.assets_csv is not None and not cfg.assets_csv.is_file():
        lines.append(f"assets_csv: {cfg.assets_csv} does not exist; the register has only the config's assets")
    return lines
