"""Import of an enterprise's existing 设备台账 (asset register) from CSV.

Column headers are matched after trimming, case-insensitively, with the Chinese and English names in
`COLUMNS` (docs/indicators.md has the table). Values accept the usual Chinese spellings (是/否, 在用/封存/报废,
生产/辅助/非生产, 2021/3/15, 2021年3月15日, 1,200,000). Files are read as UTF-8 (with or without BOM) or, failing
that, GB18030 (what Excel on a Chinese Windows saves). Every bad row is reported with its line number and the
column; when any row is bad nothing is imported.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from collector.config import AssetEntry

if TYPE_CHECKING:  # the root model loads every protocol plugin; these figures need none
    from collector.config import CollectorConfig

# field -> accepted headers (lower-cased, spaces and brackets as written by most ERP exports)
COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("设备编号", "资产编号", "设备编码", "编号", "id", "asset_id"),
    "name": ("设备名称", "名称", "name"),
    "workshop": ("车间", "所属车间", "使用车间", "workshop"),
    "line": ("产线", "生产线", "line"),
    "category": ("设备类别", "类别", "设备类型", "category"),
    "usage": ("用途", "设备用途", "usage"),
    "status": ("状态", "设备状态", "使用状态", "status"),
    "commissioned": ("投产日期", "启用日期", "投用日期", "commissioned"),
    "is_cnc": ("是否数控", "数控", "is_cnc"),
    "is_digital": ("是否数字化", "数字化", "is_digital"),
    "digital_basis": ("数字化方式", "数字化依据", "digital_basis"),
    "is_key_process": ("是否关键工序", "关键工序", "is_key_process"),
    "original_value": ("原值", "原值（元）", "原值(元)", "资产原值", "original_value"),
    "original_value_10k": ("原值（万元）", "原值(万元)"),
    "device": ("绑定设备", "采集设备", "device"),
}
HEADER_OF = {h.lower(): f for f, hs in COLUMNS.items() for h in hs}

TRUE = {"是", "y", "yes", "true", "1", "√", "✓", "有"}
FALSE = {"否", "n", "no", "false", "0", "×", "无", ""}
USAGE = {"生产": "production", "生产设备": "production", "辅助": "auxiliary", "辅助设备": "auxiliary",
         "非生产": "non_production", "非生产设备": "non_production"}
STATUS = {"在用": "in_service", "使用": "in_service", "正常": "in_service", "闲置": "idle", "停用": "idle",
          "封存": "sealed", "报废": "scrapped"}
BASIS = {"原生": "native", "自带": "native", "改造控制": "retrofit_control", "控制改造": "retrofit_control",
         "加装传感": "retrofit_sensing", "传感改造": "retrofit_sensing"}


class CsvImportError(Exception):
    """A register that cannot be imported; `lines` names each problem as `FILE:LINE: column: message`."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass
class RegisterCsv:
    entries: list[AssetEntry]
    sha256: str
    ignored_columns: list[str] = field(default_factory=list)


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("gb18030")


def _bool(v: str) -> bool:
    t = v.strip().lower()
    if t in TRUE:
        return True
    if t in FALSE:
        return False
    raise ValueError(f"'{v}' is not 是/否 (yes/no, 1/0, true/false)")


def _date(v: str) -> dt.date | None:
    t = v.strip()
    if not t:
        return None
    m = re.fullmatch(r"(\d{4})[-/.年](\d{1,2})[-/.月](\d{1,2})日?", t)
    if not m:
        raise ValueError(f"'{v}' is not a date like 2021-03-15, 2021/3/15 or 2021年3月15日")
    try:
        return dt.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError as exc:
        raise ValueError(f"'{v}': {exc}") from None


def _number(v: str) -> float | None:
    t = v.strip().replace(",", "").replace("，", "").replace("¥", "").replace("￥", "")
    if not t:
        return None
    try:
        return float(t)
    except ValueError:
        raise ValueError(f"'{v}' is not a number") from None


def _choice(v: str, table: dict[str, str], allowed: tuple[str, ...]) -> str | None:
    t = v.strip()
    if not t:
        return None
    if t in table:
        return table[t]
    if t.lower() in allowed:
        return t.lower()
    raise ValueError(f"'{v}' is not one of {', '.join([*table, *allowed])}")


def _convert(field_: str, v: str) -> Any:
    if field_ in ("is_cnc", "is_key_process"):
        return _bool(v)
    if field_ == "is_digital":
        return None if not v.strip() else _bool(v)
    if field_ == "commissioned":
        return _date(v)
    if field_ == "original_value":
        return _number(v)
    if field_ == "original_value_10k":
        n = _number(v)
        return None if n is None else round(n * 10000, 2)
    if field_ == "usage":
        return _choice(v, USAGE, ("production", "auxiliary", "non_production"))
    if field_ == "status":
        return _choice(v, STATUS, ("in_service", "idle", "sealed", "scrapped"))
    if field_ == "digital_basis":
        return _choice(v, BASIS, ("native", "retrofit_control", "retrofit_sensing"))
    t = v.strip()
    return t or None


def parse_register_csv(raw: bytes, source: str = "register.csv") -> RegisterCsv:
    """Parse and validate a whole register; raises CsvImportError listing every bad row."""
    text = _decode(raw)
    first = text.splitlines()[0] if text else ""
    delimiter = max((",", ";", "\t"), key=first.count)  # Excel exports use , (or ; or tab in some locales)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = list(reader)
    if not rows:
        raise CsvImportError([f"{source}: the file is empty"])
    header = [h.strip() for h in rows[0]]
    fields = [HEADER_OF.get(h.lower()) for h in header]
    errors: list[str] = []
    if "id" not in fields:
        raise CsvImportError([f"{source}:1: no id column (设备编号); headers found: {', '.join(header)}"])
    for f in set(fields) - {None}:
        if fields.count(f) > 1:
            errors.append(f"{source}:1: two columns map to {f}")
    if "original_value" in fields and "original_value_10k" in fields:
        errors.append(f"{source}:1: give 原值 in 元 or in 万元, not both")
    ignored = [h for h, f in zip(header, fields, strict=True) if f is None and h]
    entries: list[AssetEntry] = []
    seen: dict[str, int] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue  # blank lines are not rows
        if len(row) > len(header) and any(c.strip() for c in row[len(header):]):
            errors.append(f"{source}:{lineno}: {len(row)} cells but {len(header)} columns")
            continue
        data: dict[str, Any] = {}
        bad = False
        for f, h, cell in zip(fields, header, row, strict=False):
            if f is None:
                continue
            try:
                value = _convert(f, cell)
            except ValueError as exc:
                errors.append(f"{source}:{lineno}: {h}: {exc}")
                bad = True
                continue
            if f == "original_value_10k":
                f = "original_value"
            if value is not None:
                data[f] = value
        if bad:
            continue
        try:
            entry = AssetEntry.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                col = next((h for h, f in zip(header, fields, strict=True) if f == (err["loc"] or ("",))[0]),
                           str(err["loc"][0]) if err["loc"] else "row")
                errors.append(f"{source}:{lineno}: {col}: {err['msg'].removeprefix('Value error, ')}")
            continue
        if entry.id in seen:
            errors.append(f"{source}:{lineno}: {header[fields.index('id')]}: '{entry.id}' is already on line "
                          f"{seen[entry.id]}")
            continue
        seen[entry.id] = lineno
        entries.append(entry)
    if errors:
        raise CsvImportError(errors)
    return RegisterCsv(entries, hashlib.sha256(raw).hexdigest(), ignored)


def read_register_csv(path: Path) -> RegisterCsv:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CsvImportError([f"{path}: cannot read: {exc.strerror}"]) from None
    return parse_register_csv(raw, str(path))


def check_against_config(reg: RegisterCsv, cfg: CollectorConfig, source: str) -> list[str]:
    """Clashes with the config (ids already used, bindings to unknown or already bound devices), each with what
    the register does about it (`register.build_register`: the config wins)."""
    device_ids = {d.id for d in cfg.devices}
    bound = {a.device for a in cfg.assets if a.device}
    taken = {a.id for a in cfg.assets} | (device_ids - bound)
    errors = []
    for e in reg.entries:
        if e.id in taken:
            errors.append(f"{source}: asset '{e.id}' is already defined in the config; the config's entry is used")
        if e.device is not None and e.device not in device_ids:
            errors.append(f"{source}: asset '{e.id}': 绑定设备 '{e.device}' is not a configured device id; counted "
                          "as not connected")
        elif e.device is not None and e.device in bound:
            errors.append(f"{source}: asset '{e.id}': device '{e.device}' is already bound in the config; counted "
                          "as not connected")
        elif e.device is not None:
            bound.add(e.device)
    return errors


REGISTER_VERSIONS = "registers"  # every imported register, kept: a closed month is computed with its own


def install(reg: RegisterCsv, source: Path, target: Path, now: float | None = None) -> dict[str, Any]:
    """Write the validated register atomically (a temp file renamed over the old one): all or nothing; keep a
    copy as a version (`registers/<time>-<sha>.json`) and return the version (time, content hash, rows)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    imported_at = time.time() if now is None else now
    body = {"source": str(source), "sha256": reg.sha256, "imported_at": imported_at, "rows": len(reg.entries),
            "assets": [e.model_dump(mode="json", exclude_none=True) for e in reg.entries]}
    text = json.dumps(body, ensure_ascii=False, indent=1)
    versions = target.parent / REGISTER_VERSIONS
    versions.mkdir(exist_ok=True)
    for path in (versions / f"{int(imported_at * 1000)}-{reg.sha256[:12]}.json", target):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return version_of(body)


def version_of(body: dict[str, Any]) -> dict[str, Any]:
    """What names a register version in the chain and the report."""
    return {"imported_at": body["imported_at"], "sha256": body["sha256"],
            "rows": body.get("rows", len(body.get("assets", []))), "source": body.get("source")}


def read_imported(path: Path) -> list[AssetEntry]:
    body = json.loads(path.read_text(encoding="utf-8"))
    return [AssetEntry.model_validate(a) for a in body["assets"]]


def register_in_force(state_dir: Path, at: float | None) -> tuple[Path, dict[str, Any]] | None:
    """The imported register in force at `at` (None: the one installed now): the last version imported at or
    before it. A register installed by an older version (no copy under `registers/`) counts from its import
    time. None when no import was in force: the config's register alone."""
    current = state_dir / "register-import.json"
    if at is None:
        return (current, _version_file(current)) if current.exists() else None
    found: list[tuple[float, Path, dict[str, Any]]] = []
    for path in [*sorted((state_dir / REGISTER_VERSIONS).glob("*.json")), current]:
        if not path.exists():
            continue
        v = _version_file(path)
        if v["imported_at"] <= at and not any(f[2]["sha256"] == v["sha256"] and f[0] == v["imported_at"]
                                              for f in found):
            found.append((v["imported_at"], path, v))
    if not found:
        return None
    _, path, v = max(found, key=lambda f: f[0])
    return path, v


def _version_file(path: Path) -> dict[str, Any]:
    body = json.loads(path.read_text(encoding="utf-8"))
    return version_of(body)
