"""Months that were never measured are never sealed (无采集记录), and a closed month keeps the register that was
in force at its end: a later `collector assets import` changes today's figures, never a closed month's."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from collector.cli import main
from collector.config import parse_config
from collector.evidence import keys
from collector.indicators import chain, periods
from collector.indicators.csv_import import install, parse_register_csv
from collector.indicators.monthly import close_due_months
from collector.status import StatusStore
from tests.test_indicators_evidence import REGISTER_CSV, demo_config, fill_state

NOV_2025 = periods.month(2025, 11, "Asia/Shanghai")


def report_json(capsys: pytest.CaptureFixture[str], cfg: Path, period: str, out: Path) -> tuple[dict, str]:
    assert main(["report", "-c", str(cfg), "--period", period, "--format", "json,html", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    return json.loads((out / f"report-{period}.json").read_text(encoding="utf-8")), err


def test_a_month_before_the_first_run_is_not_chained_and_says_no_collection_record(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = demo_config(tmp_path)
    fill_state(tmp_path / "state")  # the collector first ran on 2025-11-01
    chain_file = tmp_path / "state" / chain.CHAIN_FILE
    data, err = report_json(capsys, cfg, "2025-10", tmp_path / "out")
    assert not chain_file.exists()  # nothing written: no key record, no month
    assert data["status"] == "not_measured" and data["chain"] is None
    assert "无采集记录" in err and "nothing was written to the evidence chain" in err
    page = (tmp_path / "out" / "report-2025-10.html").read_text(encoding="utf-8")
    assert "无采集记录" in page and "已关账（终版）" not in page
    # November was measured: sealed once; October still is not
    data, _ = report_json(capsys, cfg, "2025-11", tmp_path / "out")
    assert data["status"] == "closed" and data["chain"]["seq"] == 2
    report_json(capsys, cfg, "2025-10", tmp_path / "out")
    labels = [r["body"].get("period", {}).get("label") for r in chain.read(chain_file)]
    assert labels == [None, "2025-11"]


def test_a_month_the_collector_was_down_is_never_due(tmp_path: Path) -> None:
    state = tmp_path / "state"
    fill_state(state)  # November 2025; nothing in December; a day in January 2026
    store = StatusStore(state / "status.db", 300)
    jan = int(periods.month(2026, 1, "Asia/Shanghai").start)
    store.write([], [], {}, set(range(jan, jan + 86400, 300)))
    cfg = parse_config(yaml.safe_load(demo_config(tmp_path).read_text(encoding="utf-8")))
    signer, _ = keys.init(state)
    records = close_due_months(cfg, store, state, periods.month_closes(2026, 1, "Asia/Shanghai") + 60, signer)
    assert [r["body"]["period"]["label"] for r in records] == ["2025-11", "2026-01"]
    store.close()


def test_a_closed_month_keeps_its_register_after_a_new_import(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = demo_config(tmp_path)
    state = tmp_path / "state"
    fill_state(state)
    # the register in force in November 2025: imported on Nov 15 (as `assets import` would have installed it)
    reg_a = parse_register_csv(REGISTER_CSV.encode(), "a.csv")
    nov15 = NOV_2025.start + 14 * 86400
    version_a = install(reg_a, Path("a.csv"), state / "register-import.json", now=nov15)
    before, _ = report_json(capsys, cfg, "2025-11", tmp_path / "before")
    assert before["evidence"]["register"]["sha256"] == reg_a.sha256 == version_a["sha256"]
    assert before["evidence"]["register"]["rows"] == 4

    # a new register today: two more CNC machines in service
    reg_b = tmp_path / "b.csv"
    reg_b.write_text(REGISTER_CSV + "M-005,加工中心 VMC850,ws-machining,L1,金属切削机床,生产,在用,2019-01-01,是,是,原生,"
                     "是,850000,VMC\nM-006,加工中心 VMC650,ws-machining,L1,金属切削机床,生产,在用,2019-01-01,是,是,原生,"
                     "是,650000,VMC\n", encoding="utf-8")
    assert main(["assets", "import", str(reg_b), "-c", str(cfg)]) == 0
    capsys.readouterr()
    imports = [r["body"] for r in chain.read(state / chain.CHAIN_FILE) if r["body"].get("kind") == "register_import"]
    assert len(imports) == 1 and imports[0]["rows"] == 6 and imports[0]["sha256"] != reg_a.sha256

    after, _ = report_json(capsys, cfg, "2025-11", tmp_path / "after")
    assert after["figures"] == before["figures"] and after["workshops"] == before["workshops"]
    assert [d["id"] for d in after["devices"]] == [d["id"] for d in before["devices"]]
    assert after["evidence"]["register"]["sha256"] == reg_a.sha256
    # today's figures use the new register
    assert main(["indicators", "-c", str(cfg), "--period", "month", "--json"]) == 0
    today = json.loads(capsys.readouterr().out)
    assert today["figures"]["D1"]["denominator"] == before["figures"]["D1"]["denominator"] + 2
    assert today["figures"]["D1"]["numerator"] == before["figures"]["D1"]["numerator"] + 2



CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
async def test_the_rendered_reports_say_no_collection_record_and_show_the_evidence_footer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw_api = pytest.importorskip("playwright.async_api", reason="playwright (pip, dev extra) is not installed")
    cfg = demo_config(tmp_path)
    fill_state(tmp_path / "state")
    out = tmp_path / "out"
    report_json(capsys, cfg, "2025-10", out)
    report_json(capsys, cfg, "2025-11", out)
    signer = keys.load(tmp_path / "state")
    assert signer is not None
    async with pw_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page()
            await page.goto((out / "report-2025-10.html").as_uri())
            october = await page.inner_text("body")
            await page.goto((out / "report-2025-11.html").as_uri())
            november = await page.inner_text("body")
            footer = await page.inner_text("footer")
        finally:
            await browser.close()
    assert "无采集记录" in october and "已关账（终版）" not in october and "尚未写入" in october
    assert "已关账（终版）" in november and "签名密钥指纹" in november
    assert keys.show_fingerprint(signer.fingerprint) in footer and "#2" in footer  # the key record, then November
    assert "配置文件中的设备（无导入台账）" in footer and "无（尚未向外部存证）" in footer  # `report` alone anchors nothing
