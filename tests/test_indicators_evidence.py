"""Register import (设备台账 CSV), the evidence chain and `collector verify`, the report package and its CLI."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import shutil
import subprocess
import zoneinfo
from pathlib import Path

import pytest
import yaml

from collector.cli import main
from collector.config import parse_config
from collector.evidence import keys
from collector.indicators import chain
from collector.indicators.csv_import import CsvImportError, parse_register_csv
from collector.indicators.register import load_register
from collector.status import StatusStore

ROOT = Path(__file__).resolve().parents[1]
TZ = "Asia/Shanghai"
SH = zoneinfo.ZoneInfo(TZ)

REGISTER_CSV = """设备编号,设备名称,车间,产线,设备类别,用途,状态,投产日期,是否数控,是否数字化,数字化方式,是否关键工序,原值（元）,规格型号
M-001,数控车床 CK6140,ws-machining,L1,金属切削机床,生产,在用,2020/3/15,是,是,原生,是,"320,000",CK6140
M-002,摇臂钻床 Z3050,ws-machining,L1,金属切削机床,生产,在用,2012年5月1日,否,否,,否,56000,Z3050
M-003,旧冲床,ws-machining,L2,锻压设备,生产,报废,2005-01-01,否,否,,否,12000,J23
M-004,行车 10t,ws-machining,,起重设备,辅助,闲置,2016-07-01,否,是,加装传感,否,90000,QD10
"""


def test_register_csv_with_chinese_headers_and_values() -> None:
    reg = parse_register_csv(REGISTER_CSV.encode("utf-8"))
    a = {e.id: e for e in reg.entries}
    assert list(a) == ["M-001", "M-002", "M-003", "M-004"]
    assert a["M-001"].is_cnc and a["M-001"].digital_basis == "native" and a["M-001"].is_key_process
    assert a["M-001"].original_value == 320000 and a["M-001"].commissioned == dt.date(2020, 3, 15)
    assert a["M-002"].commissioned == dt.date(2012, 5, 1) and a["M-002"].is_digital is False
    assert a["M-003"].status == "scrapped" and a["M-004"].usage == "auxiliary" and a["M-004"].status == "idle"
    assert a["M-004"].digital_basis == "retrofit_sensing"
    assert reg.ignored_columns == ["规格型号"]


def test_register_csv_saved_by_excel_as_gbk_with_value_in_10k_yuan() -> None:
    text = "设备编号,设备名称,是否数控,原值（万元）\r\nK-1,电脑横机,Y,12.5\r\n"
    reg = parse_register_csv(text.encode("gb18030"))
    assert reg.entries[0].name == "电脑横机" and reg.entries[0].original_value == 125000


def test_bad_rows_are_reported_with_line_numbers_and_nothing_is_imported() -> None:
    text = REGISTER_CSV + "M-005,坏行,ws,,,生产,在修,2020-01-01,可能,是,,否,abc,\nM-001,重复,ws,,,生产,在用,,否,,,,,\n"
    with pytest.raises(CsvImportError) as err:
        parse_register_csv(text.encode(), "reg.csv")
    lines = err.value.lines
    assert any(ln.startswith("reg.csv:6: 状态:") for ln in lines), lines
    assert any(ln.startswith("reg.csv:6: 是否数控:") and "可能" in ln for ln in lines), lines
    assert any(ln.startswith("reg.csv:6: 原值（元）:") for ln in lines), lines
    assert any(ln.startswith("reg.csv:7: 设备编号:") and "line 2" in ln for ln in lines), lines


def demo_config(tmp_path: Path) -> Path:
    data = yaml.safe_load((ROOT / "config/demo.yaml").read_text(encoding="utf-8"))
    data["state_dir"] = str(tmp_path / "state")
    data["indicators"]["bucket"] = 300
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_assets_import_command_installs_all_or_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = demo_config(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text(REGISTER_CSV + "M-009,x,,,,生产,在用,,maybe,,,,,\n", encoding="utf-8")
    assert main(["assets", "import", str(bad), "-c", str(cfg_path)]) == 1
    assert "bad.csv:6: 是否数控" in capsys.readouterr().err
    assert not (tmp_path / "state" / "register-import.json").exists()

    good = tmp_path / "register.csv"
    good.write_text(REGISTER_CSV, encoding="utf-8")
    assert main(["assets", "import", str(good), "-c", str(cfg_path)]) == 0
    cfg = parse_config(yaml.safe_load(cfg_path.read_text(encoding="utf-8")))
    assets = {a.id: a for a in load_register(cfg)}
    assert {"M-001", "M-002", "M-003", "M-004", "cnc-01", "grd-01"} <= set(assets)
    assert assets["M-001"].source == "import" and assets["M-001"].device is None

    clash = tmp_path / "clash.csv"
    capsys.readouterr()
    # a row using a configured device's id: imported, the config wins for it, with a warning (docs/indicators.md)
    clash.write_text("设备编号,设备名称,绑定设备\ngrd-01,重复的磨床,\nM-010,新钻床,\nM-011,新磨床,grd-99\n",
                     encoding="utf-8")
    assert main(["assets", "import", str(clash), "-c", str(cfg_path)]) == 0
    out, err = capsys.readouterr()
    assert f"warning: {clash}: asset 'grd-01' is already defined in the config; the config's entry is used" in err
    assert f"warning: {clash}: asset 'M-011': 绑定设备 'grd-99' is not a configured device id; counted as not " \
        "connected" in err
    assert "2 row(s) clash with the config, which wins" in err and "put the device id in 绑定设备" in err
    assert "collector reload" in out
    assets = {a.id: a for a in load_register(cfg)}
    assert assets["grd-01"].source == "config" and assets["grd-01"].name != "重复的磨床"
    assert assets["M-010"].source == "import" and "M-001" not in assets
    assert assets["M-011"].source == "import" and assets["M-011"].device is None


def test_assets_csv_key_in_the_config(tmp_path: Path) -> None:
    (tmp_path / "reg.csv").write_text("设备编号,设备名称,是否数控,是否数字化,绑定设备\nX-1,新加工中心,是,是,knit-01\n",
                                      encoding="utf-8")
    data = yaml.safe_load((ROOT / "config/demo.yaml").read_text(encoding="utf-8"))
    data["assets_csv"] = str(tmp_path / "reg.csv")
    data["state_dir"] = str(tmp_path / "state")
    assets = {a.id: a for a in load_register(parse_config(data))}
    assert "knit-01" not in assets and assets["X-1"].device == "knit-01" and assets["X-1"].source == "assets_csv"


def test_chain_verifies_and_one_edited_byte_is_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "chain.jsonl"
    signer, _ = keys.init(tmp_path)
    ids = {"enterprise": "e1", "workshop": "main"}
    for m in (9, 10, 11):
        chain.append(path, {"period": {"label": f"2026-{m:02d}"}, "figures": {"D2": {"numerator": m}}, "名": "嘉兴"},
                     signer, unique_key=("period.label",), **ids)
    assert chain.append(path, {"period": {"label": "2026-10"}}, signer, unique_key=("period.label",),
                        **ids) is None  # already there
    assert main(["verify", str(path)]) == 0
    assert "4 record(s)" in capsys.readouterr().out  # the key record, then three months
    raw = bytearray(path.read_bytes())
    third = raw.index(b"\n", raw.index(b"\n") + 1) + 1
    pos = raw.index(b'"numerator":10', third) + len('"numerator":')
    raw[pos] = ord("9")  # 10 -> 90: one byte
    path.write_bytes(bytes(raw))
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "BROKEN at record 3 (seq 3)" in out and "2 record(s) before it are intact" in out
    with pytest.raises(ValueError, match="broken at record 3"):
        chain.append(path, {"period": {"label": "2026-12"}}, signer, **ids)


def test_chain_detects_a_removed_record(tmp_path: Path) -> None:
    path = tmp_path / "chain.jsonl"
    signer, _ = keys.init(tmp_path)
    for m in (1, 2, 3):
        chain.append(path, {"n": m}, signer, enterprise="e1", workshop="main")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[1] + lines[3])
    res = chain.verify(path)
    assert not res.ok and res.broken_line == 3 and "seq" in (res.reason or "")


def fill_state(state: Path) -> None:
    """A November 2025 (closed whatever the clock says) of the demo workshop: the collector ran all month, 5-min buckets."""
    store = StatusStore(state / "status.db", 300)
    start = dt.datetime(2025, 11, 1, tzinfo=SH).timestamp()
    end = dt.datetime(2025, 12, 1, tzinfo=SH).timestamp()
    buckets = range(int(start), int(end), 300)
    store.write([], [], {}, set(buckets))
    good: dict[tuple[str, int], float] = {}
    for dev in ("cnc-01", "cnc-02", "knit-01", "comp-01", "meter-01", "press-01"):
        good.update({(dev, b): b + 30.0 for b in buckets})
    # imm-01 was networked until Nov 12 only: 11 of 30 days; pack-01 (the S7 line) was connected only later: no data
    good.update({("imm-01", b): b + 30.0 for b in buckets if b < start + 11 * 86400})
    store.write([], [], good, set())
    store.close()


def test_report_package_html_csv_json_and_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = demo_config(tmp_path)
    fill_state(tmp_path / "state")
    out = tmp_path / "out"
    rc = main(["report", "-c", str(cfg_path), "--period", "2025-11", "--format", "html,csv", "--format", "json",
               "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["report-2025-11-figures.csv", "report-2025-11.csv",
                                                      "report-2025-11.html", "report-2025-11.json"]
    rows = list(csv.DictReader(io.StringIO((out / "report-2025-11.csv").read_text(encoding="utf-8-sig"))))
    assert list(rows[0])[:4] == ["设备编号", "设备名称", "车间", "产线"]
    assert {"是否数控", "是否数字化", "原值（元）", "覆盖率", "首次有效数据", "最后有效数据", "协议", "接入地址",
            "是否联网"} <= set(rows[0])
    by_id = {r["设备编号"]: r for r in rows}
    assert by_id["imm-01"]["是否联网"] == "否" and by_id["imm-01"]["覆盖率"] == "0.3666"  # 11/30 truncated
    assert by_id["cnc-01"]["是否联网"] == "是" and by_id["cnc-01"]["协议"] == "opcua"
    assert by_id["lathe-07"]["是否数字化"] == "否" and by_id["meter-01"]["计入统计范围"] == "否"
    figs = {r["figure"]: r for r in csv.DictReader(io.StringIO(
        (out / "report-2025-11-figures.csv").read_text(encoding="utf-8-sig"))) if r["scope"] == "enterprise"}
    assert (figs["D1"]["numerator"], figs["D1"]["denominator"], figs["D1"]["passed"]) == ("7", "9", "true")
    assert (figs["D2"]["numerator"], figs["D2"]["denominator"], figs["D2"]["passed"]) == ("5", "8", "true")
    data = json.loads((out / "report-2025-11.json").read_text(encoding="utf-8"))
    assert data["status"] == "closed" and data["chain"]["seq"] == 2 and len(data["daily"]) == 30
    assert data["daily"][10]["numerator"] == 6 and data["daily"][11]["numerator"] == 5
    page = (out / "report-2025-11.html").read_text(encoding="utf-8")
    assert "<svg" in page and "目标 55%" in page and "数字化设备联网率" in page
    assert not any(s in page for s in ("<script", "<link", "src=", "http://", "https://"))  # self-contained
    # the monthly summary went into the chain once, and verifies
    chain_file = tmp_path / "state" / "evidence-chain.jsonl"
    assert main(["report", "-c", str(cfg_path), "--period", "2025-11", "--format", "json", "--out", str(out),
                 "--lang", "en"]) == 0
    records = chain.read(chain_file)
    assert [r["body"].get("kind") for r in records] == ["key", "monthly_summary"]  # the key, then the month
    assert records[1]["body"]["figures"]["D2"]["numerator"] == 5
    assert main(["verify", str(chain_file)]) == 0
    capsys.readouterr()
    assert main(["indicators", "-c", str(cfg_path), "--period", "2025-11"]) == 0
    table = capsys.readouterr().out
    assert "数字化设备联网率" in table and "62.5 %" in table and "77.7 %" in table and "(closed)" in table


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package `chromium`)")
def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    cfg_path = demo_config(tmp_path)
    fill_state(tmp_path / "state")
    assert main(["report", "-c", str(cfg_path), "--period", "2025-11", "--out", str(tmp_path)]) == 0
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'prof'}",
         f"--screenshot={shot}", "--window-size=1280,2400", (tmp_path / "report-2025-11.html").as_uri()],
        capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a page with charts, not a blank one
    # the text on the page: tests/test_indicators_assessor.py (which also refreshes docs/img/report-example.png)
