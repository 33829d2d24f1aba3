"""The layering rules of docs/architecture.md, checked on the import statements of every source file (`ast`):

- `collector/` reaches adapters only through the registry (`adapters.base`);
- an adapter imports from the core only the config (`collector.config*`), the model (`collector.model`) and
  the value stage every protocol shares (`collector.transform`), from adapters only `adapters.base` and its
  own folder; its plugin object may name its simulator
  (`simulators.*`, imported inside the hook function only);
- simulators import nothing from `collector/` but the config (`collector.config*`).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(module, line, at module level) of every import in `tree`."""
    found: list[tuple[str, int, bool]] = []
    top = {id(n) for n in getattr(tree, "body", [])}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno, id(node) in top))
    return found


def _under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(rel: str, source: str) -> list[str]:
    """The forbidden imports of the file at `rel` (a path relative to the repository) with `source`."""
    parts = Path(rel).parts
    out: list[str] = []
    for module, line, top in _imports(ast.parse(source)):
        bad = False
        if parts[0] == "collector":
            bad = _under(module, "adapters") and not _under(module, "adapters.base")
        elif parts[0] == "adapters" and len(parts) > 2:  # a protocol's folder
            own = f"adapters.{parts[1]}"
            if _under(module, "collector"):
                bad = not _under(module, "collector.config", "collector.model", "collector.transform")
            elif _under(module, "adapters"):
                bad = not _under(module, "adapters.base", own)
            elif _under(module, "simulators"):
                bad = top or parts[-1] != "__init__.py"
        elif parts[0] == "adapters":  # adapters/base.py: the interface and the registry
            bad = _under(module, "collector") and not _under(module, "collector.model")
        elif parts[0] == "simulators":
            bad = _under(module, "collector") and not _under(module, "collector.config")
        if bad:
            out.append(f"{rel}:{line}: imports {module}")
    return out


def _sources() -> list[Path]:
    return sorted(p for top in ("collector", "adapters", "simulators") for p in (ROOT / top).rglob("*.py"))


def test_every_source_file_keeps_the_layering() -> None:
    files = _sources()
    assert len(files) > 60  # the walk found the tree
    found = [v for p in files for v in violations(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8"))]
    assert found == []


def test_a_forbidden_import_is_found() -> None:
    """The check can fail: each rule on a file that breaks it."""
    assert violations("collector/cli.py", "from adapters.opcua.commands import add_parsers\n") == [
        "collector/cli.py:1: imports adapters.opcua.commands"]
    assert violations("collector/engine.py", "import adapters.modbus.adapter\n") == [
        "collector/engine.py:1: imports adapters.modbus.adapter"]
    assert violations("adapters/modbus/adapter.py", "from collector.app import Collector\n") == [
        "adapters/modbus/adapter.py:1: imports collector.app"]
    assert violations("adapters/modbus/adapter.py", "from adapters.opcua.nodeids import parse_node\n") == [
        "adapters/modbus/adapter.py:1: imports adapters.opcua.nodeids"]
    assert violations("adapters/modbus/codec.py", "from simulators.modbus import ModbusServerSim\n") == [
        "adapters/modbus/codec.py:1: imports simulators.modbus"]
    assert violations("simulators/modbus.py", "def f():\n    from collector.engine import Engine\n") == [
        "simulators/modbus.py:2: imports collector.engine"]
    assert violations("adapters/base.py", "from collector.config import ModbusDevice\n") == [
        "adapters/base.py:1: imports collector.config"]
    # what the rules allow
    assert violations("collector/engine.py", "from adapters.base import registry\n") == []
    assert violations("adapters/modbus/__init__.py", "def sim():\n    from simulators.modbus import S\n") == []
    assert violations("adapters/opcua/adapter.py", "from collector.config.secrets import read_secret\n") == []
