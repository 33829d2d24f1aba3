"""The sinks' import rule (DESIGN.md, docs/architecture.md §4): `collector/sinks/*` imports only the model,
each other and their encoders' libraries, never the engine, the wiring, the config, adapters or simulators.
The adapter-side rules are in tests/test_layering.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SINKS = Path(__file__).resolve().parents[1] / "collector" / "sinks"
ALLOWED_PROJECT = ("collector.model", "collector.sinks")  # the model; each other (link, base, mqtt, ...)
PROJECT_ROOTS = ("collector", "adapters", "simulators", "tests")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, with its line (TYPE_CHECKING imports count too: they are a dependency)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside collector.sinks
                found.append((node.lineno, "collector.sinks." + (node.module or "")))
            elif node.module == "collector":
                found += [(node.lineno, f"collector.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module or ""))
    return found


def forbidden(path: Path) -> list[str]:
    bad = []
    for line, name in imported_modules(path):
        root = name.split(".")[0]
        if root in PROJECT_ROOTS and not any(name == a or name.startswith(a + ".") for a in ALLOWED_PROJECT):
            bad.append(f"{path.name}:{line} imports {name}")
    return bad


def sink_modules() -> list[Path]:
    return sorted(p for p in SINKS.glob("*.py") if not p.name.endswith("_pb2.py"))


@pytest.mark.parametrize("path", sink_modules(), ids=lambda p: p.name)
def test_a_sink_imports_only_the_model_and_other_sinks(path: Path) -> None:
    assert forbidden(path) == []


def test_the_rule_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The check itself can fail: each kind of forbidden import is caught, the allowed ones are not."""
    bad = tmp_path / "bad.py"
    bad.write_text("import collector.engine\nfrom collector.app import Collector\nfrom collector import config\n"
                   "from adapters.base import Adapter\nimport simulators.workshop\n"
                   "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from collector.status import X\n"
                   "from collector.model import Row\nfrom collector.sinks.link import LinkState\nfrom . import base\n"
                   "import orjson\n")
    assert forbidden(bad) == ["bad.py:1 imports collector.engine", "bad.py:2 imports collector.app",
                              "bad.py:3 imports collector.config", "bad.py:4 imports adapters.base",
                              "bad.py:5 imports simulators.workshop", "bad.py:8 imports collector.status"]


def test_every_sink_module_is_checked() -> None:
    names = {p.name for p in sink_modules()}
    assert {"base.py", "mqtt.py", "mqtt_data.py", "control.py", "evidence.py", "influx.py", "sparkplug.py",
            "link.py"} <= names
