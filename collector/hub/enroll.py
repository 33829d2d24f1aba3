"""Enrolment: the enterprises a hub receives from, read from the operator's CSV (UTF-8, with or without BOM,
Chinese or English headers), all-or-nothing: a file with one bad row enrols nothing and names every bad cell.

Columns: 统一社会信用代码 (credit_code), 企业名称 (name), 县（市、区） (county), 行业 (industry), 行业骨干企业
(backbone: 是/否), 公钥 (public_key: base64 as `collector keys show` prints it, or a .pub file) or 密钥指纹
(fingerprint: then the key is learned from the enterprise's own key record, which must carry that fingerprint),
optional 采集器企业标识 (collector_id: the `enterprise` its collectors write; default the credit code). An
enterprise with several collectors has one row per collector key (the other cells the same).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from collector.credit_code import credit_code_problem
from collector.evidence.keys import KeyFileError, fingerprint, load_public, normal_fingerprint, public_b64

HEADERS: dict[str, tuple[str, ...]] = {
    "credit_code": ("统一社会信用代码", "credit_code", "信用代码"),
    "name": ("企业名称", "name", "名称"),
    "county": ("县（市、区）", "县(市、区)", "县市区", "county", "区县"),
    "industry": ("行业", "industry"),
    "backbone": ("行业骨干企业", "backbone", "骨干企业"),
    "public_key": ("公钥", "public_key"),
    "fingerprint": ("密钥指纹", "fingerprint", "指纹"),
    "collector_id": ("采集器企业标识", "collector_id"),
}
REQUIRED = ("credit_code", "name", "county")
YES = {"是", "y", "yes", "true", "1", "骨干"}
NO = {"否", "n", "no", "false", "0", ""}


class EnrolError(ValueError):
    """A CSV that cannot be enrolled; `lines` names each row and cell."""

    def __init__(self, source: str, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.source, self.lines = source, lines


@dataclass
class EnrolKey:
    fingerprint: str
    public_key: str | None  # base64 raw key; None when only the fingerprint was given


@dataclass
class EnrolRow:
    credit_code: str
    name: str
    county: str
    industry: str
    backbone: bool
    collector_id: str
    keys: list[EnrolKey] = field(default_factory=list)


def read_csv(path: Path, counties: list[str]) -> list[EnrolRow]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise EnrolError(str(path), [f"cannot read: {exc}"]) from None
    return parse_csv(text, str(path), counties, base=path.parent)


def _columns(header: list[str]) -> dict[str, int]:
    cols: dict[str, int] = {}
    for i, h in enumerate(header):
        h = h.strip()
        for name, aliases in HEADERS.items():
            if h in aliases or h.lower() in aliases:
                cols.setdefault(name, i)
    return cols


def parse_csv(text: str, source: str, counties: list[str], base: Path | None = None) -> list[EnrolRow]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise EnrolError(source, ["empty file: expected a header row (统一社会信用代码,企业名称,县（市、区）,…)"])
    cols = _columns(rows[0])
    errors = [f"header: no column {HEADERS[c][0]} ({c})" for c in REQUIRED if c not in cols]
    if "public_key" not in cols and "fingerprint" not in cols:
        errors.append("header: no column 公钥 (public_key) or 密钥指纹 (fingerprint)")
    if errors:
        raise EnrolError(source, errors)
    by_code: dict[str, EnrolRow] = {}
    seen_fp: dict[str, int] = {}
    for n, raw in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in raw):
            continue

        def cell(name: str, raw: list[str] = raw) -> str:
            i = cols.get(name)
            return raw[i].strip() if i is not None and i < len(raw) else ""

        where = f"row {n}"
        code = cell("credit_code").upper()
        problem = credit_code_problem(code)
        if problem is not None:
            errors.append(f"{where}: 统一社会信用代码 '{code}' {problem}")
        name, county = cell("name"), cell("county")
        if not name:
            errors.append(f"{where}: 企业名称 is empty")
        if county not in counties:
            errors.append(f"{where}: 县（市、区） '{county}' is not one of the hub's counties "
                          f"({'、'.join(counties)}); add it to `counties` in hub.yaml or fix the cell")
        flag = cell("backbone").lower()
        if flag not in YES and flag not in NO:
            errors.append(f"{where}: 行业骨干企业 '{cell('backbone')}' must be 是 or 否 (yes/no)")
        key = _key(cell("public_key"), cell("fingerprint"), where, errors, base)
        if key is not None:
            if key.fingerprint in seen_fp:
                errors.append(f"{where}: the key {key.fingerprint} is already on row {seen_fp[key.fingerprint]}")
            seen_fp[key.fingerprint] = n
        row = EnrolRow(code, name, county, cell("industry"), flag in YES, cell("collector_id") or code)
        first = by_code.setdefault(code, row)
        if first is not row and (first.name, first.county, first.collector_id) != \
                (row.name, row.county, row.collector_id):
            errors.append(f"{where}: {code} appears on an earlier row with another name, county or collector id")
        if key is not None:
            first.keys.append(key)
    ids: dict[str, str] = {}
    for r in by_code.values():
        if r.collector_id in ids:
            errors.append(f"采集器企业标识 '{r.collector_id}' is used by both {ids[r.collector_id]} and "
                          f"{r.credit_code}")
        ids[r.collector_id] = r.credit_code
    if errors:
        raise EnrolError(source, errors)
    return list(by_code.values())


def _key(public: str, fp: str, where: str, errors: list[str], base: Path | None) -> EnrolKey | None:
    if public:
        candidate = public
        if base is not None and not public.startswith("-----") and (base / public).is_file():
            candidate = str(base / public)
        try:
            pub = load_public(candidate)
        except KeyFileError as exc:
            errors.append(f"{where}: 公钥: {exc}")
            return None
        if fp:
            try:
                if normal_fingerprint(fp) != fingerprint(pub):
                    errors.append(f"{where}: 密钥指纹 {fp} is not the fingerprint of the 公钥 on that row")
                    return None
            except KeyFileError as exc:
                errors.append(f"{where}: 密钥指纹: {exc}")
                return None
        return EnrolKey(fingerprint(pub), public_b64(pub))
    if fp:
        try:
            return EnrolKey(normal_fingerprint(fp), None)
        except KeyFileError as exc:
            errors.append(f"{where}: 密钥指纹: {exc}")
            return None
    errors.append(f"{where}: neither 公钥 nor 密钥指纹 is filled in (`collector keys show` on the collector "
                  "prints both)")
    return None


@dataclass
class EnrolResult:
    enterprises_new: int = 0
    enterprises_updated: int = 0
    keys_new: int = 0


def enrol(conn: psycopg.Connection[Any], rows: list[EnrolRow]) -> EnrolResult:
    """Upsert the enterprises and add their keys in one transaction; a key enrolled for another enterprise is
    refused (the whole file then enrols nothing)."""
    res = EnrolResult()
    with conn.transaction():
        for r in rows:
            cur = conn.execute(
                "INSERT INTO enterprises (id, name, county, industry, backbone, collector_id) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                "county = excluded.county, industry = excluded.industry, backbone = excluded.backbone, "
                "collector_id = excluded.collector_id, updated_at = now() RETURNING (xmax = 0) AS inserted",
                (r.credit_code, r.name, r.county, r.industry, r.backbone, r.collector_id))
            row = cur.fetchone()
            if row is not None and row["inserted"]:
                res.enterprises_new += 1
            else:
                res.enterprises_updated += 1
            for k in r.keys:
                held = conn.execute("SELECT enterprise_id, public_key FROM keys WHERE fingerprint = %s",
                                    (k.fingerprint,)).fetchone()
                if held is None:
                    conn.execute("INSERT INTO keys (fingerprint, enterprise_id, public_key) VALUES (%s, %s, %s)",
                                 (k.fingerprint, r.credit_code, k.public_key))
                    res.keys_new += 1
                elif held["enterprise_id"] != r.credit_code:
                    raise EnrolError("<database>", [f"{r.credit_code}: key {k.fingerprint} is already enrolled "
                                                    f"for {held['enterprise_id']}"])
                elif held["public_key"] is None and k.public_key is not None:
                    conn.execute("UPDATE keys SET public_key = %s WHERE fingerprint = %s",
                                 (k.public_key, k.fingerprint))
    return res
