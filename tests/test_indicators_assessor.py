"""What an assessor relies on (issue 14, items 5 and 6): the key-process scope in every figure, one display rule
for every rate, the 统一社会信用代码 check character, and the report itself read back from headless Chromium
(HTML and PDF) in Chinese and English.
"""

from __future__ import annotations

import asyncio
import copy
import csv
import datetime as dt
import io
import json
import os
import re
import shutil
import subprocess
import zoneinfo
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.app import Collector
from collector.cli import main
from collector.config import CollectorConfig, ConfigError, IndicatorConfig, Settings, SiteConfig, parse_config
from collector.credit_code import credit_code_problem
from collector.evidence import keys
from collector.http import HttpServer
from collector.indicators import periods
from collector.indicators.csv_import import install, read_register_csv
from collector.indicators.figures import SIMULATED_BANNER, SIMULATED_BANNER_EN, PeriodResult, compute
from collector.indicators.live import live_snapshot
from collector.indicators.rates import Figure, pct
from collector.indicators.register import IMPORTED_REGISTER, Asset, load_register
from collector.indicators.report import render_figures_csv, render_html, report_footer_data, write_package
from collector.status import StatusStore, StatusTracker
from collector.view import fmt_rate
from simulators.workshop import Workshop
from tests.conftest import Recorder
from tests.support.broker import MosquittoProcess, free_port
from tests.test_indicators_evidence import REGISTER_CSV, demo_config, fill_state

ROOT = Path(__file__).resolve().parents[1]
TZ = "Asia/Shanghai"
SH = zoneinfo.ZoneInfo(TZ)
H = 3600
NOV = periods.month(2026, 11, TZ)
AFTER_CLOSE = periods.month_closes(2026, 11, TZ) + 1
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


def t(day: int, month: int = 11) -> float:
    return dt.datetime(2026, month, day, tzinfo=SH).timestamp()


# ------------------------------------------------------------------------------------------------ scope


def machine(i: int, workshop: str, *, cnc: bool, key: bool, value: float, status: str = "in_service") -> Asset:
    return Asset(id=f"{workshop}-{i}", name=f"设备 {i}", workshop=workshop, line=None, category=None,
                 usage="production", status=status, commissioned=None, is_cnc=cnc, is_digital=True,
                 digital_basis=None, is_key_process=key, original_value=value, device=f"{workshop}-d{i}",
                 protocol="modbus", endpoint="tcp://127.0.0.1:502")


def scope_register() -> list[Asset]:
    """30 machines in U, 21 CNC; 11 on key processes, 10 of them CNC (the issue's register).

    ws-a: 6 key CNC (value 100 each), 1 key non-CNC (value 500), 4 other non-CNC -> all 6/11 fails, key 6/7 passes;
    ws-b: 4 key CNC (value 100), 11 other CNC, 4 other non-CNC; a scrapped key CNC machine is outside U."""
    out = [machine(i, "ws-a", cnc=True, key=True, value=100) for i in range(6)]
    out.append(machine(6, "ws-a", cnc=False, key=True, value=500))
    out += [machine(i, "ws-a", cnc=False, key=False, value=50) for i in range(7, 11)]
    out += [machine(i, "ws-b", cnc=True, key=True, value=100) for i in range(4)]
    out += [machine(i, "ws-b", cnc=True, key=False, value=200) for i in range(4, 15)]
    out += [machine(i, "ws-b", cnc=False, key=False, value=80) for i in range(15, 19)]
    out.append(machine(19, "ws-b", cnc=True, key=True, value=900, status="scrapped"))
    return out


def month_of(tmp_path: Path, assets: list[Asset], scope: str) -> PeriodResult:
    cfg = CollectorConfig(site=SiteConfig(enterprise_id="e1", workshop="ws-a"),
                          indicators=IndicatorConfig(bucket=H, scope=scope))  # type: ignore[arg-type]
    store = StatusStore(tmp_path / f"status-{scope}.db", H)
    store.write([], [], {}, set(range(int(t(1)), int(t(1, 12)), H)))
    # the first three key CNC machines of ws-a deliver all month, nothing else does
    store.write([], [], {(f"ws-a-d{i}", b): b + 10.0 for i in range(3) for b in range(int(t(1)), int(t(1, 12)), H)},
                set())
    return compute(cfg, assets, store, NOV, AFTER_CLOSE)


def fraction(f: Figure) -> tuple[float, float]:
    return f.numerator, f.denominator


def test_key_process_scope_applies_to_d1_d1v_and_the_workshops(tmp_path: Path) -> None:
    assets = scope_register()
    whole = month_of(tmp_path, assets, "all")
    key = month_of(tmp_path, assets, "key_process")
    assert fraction(whole.figure("D1")) == (21, 30)
    assert fraction(key.figure("D1")) == (10, 11)  # not 21/30: U holds key processes only
    assert fraction(key.figure("D1k")) == (10, 11)
    # D1v by original value: key CNC 10 x 100 of key 10 x 100 + 500
    assert fraction(whole.figure("D1v")) == (10 * 100 + 11 * 200, 10 * 100 + 500 + 4 * 50 + 11 * 200 + 4 * 80)
    assert fraction(key.figure("D1v")) == (1000, 1500)
    # a workshop's pass/fail flips with the scope: ws-a 6/11 = 54.5 % fails, 6/7 = 85.7 % passes
    assert fraction(whole.figure("D1", "ws-a")) == (6, 11) and whole.figure("D1", "ws-a").passed is False
    assert fraction(key.figure("D1", "ws-a")) == (6, 7) and key.figure("D1", "ws-a").passed is True
    assert fraction(key.figure("D1", "ws-b")) == (4, 4) and fraction(whole.figure("D1", "ws-b")) == (15, 19)
    # the networking figures were already scoped; they stay so (D2, D2a, D3 over the 11)
    assert fraction(key.figure("D2")) == (3, 11) and fraction(key.figure("D3")) == (11, 11)
    assert fraction(whole.figure("D2")) == (3, 30)
    # the rows outside the key-process U say why
    rows = {r.asset.id: r for r in key.devices}
    assert rows["ws-a-7"].excluded == "not_key_process" and rows["ws-b-19"].excluded == "scrapped"
    assert rows["ws-a-0"].excluded is None and rows["ws-a-0"].in_universe


def test_key_process_scope_in_the_live_snapshot() -> None:
    assets = scope_register()
    snap = live_snapshot(assets, {}, IndicatorConfig(scope="key_process"), SiteConfig(enterprise_id="e1"))
    assert (snap["figures"]["D1"]["numerator"], snap["figures"]["D1"]["denominator"]) == (10, 11)
    assert (snap["workshops"]["ws-a"]["D1"]["numerator"], snap["workshops"]["ws-a"]["D1"]["denominator"]) == (6, 7)


# ------------------------------------------------------------------------------------------------ credit code

# GB 32100-2015, 4.3: the value of each character and the weight of each of the 17 positions, as the standard
# tabulates them (written out here, not computed, so the test checks the code's 3^(i-1) mod 31).
REF_VALUES = {**{str(i): i for i in range(10)}, "A": 10, "B": 11, "C": 12, "D": 13, "E": 14, "F": 15, "G": 16,
              "H": 17, "J": 18, "K": 19, "L": 20, "M": 21, "N": 22, "P": 23, "Q": 24, "R": 25, "T": 26, "U": 27,
              "W": 28, "X": 29, "Y": 30}
REF_WEIGHTS = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28]


def reference_valid(code: str) -> bool:
    if len(code) != 18 or any(c not in REF_VALUES for c in code):
        return False
    c18 = 31 - sum(REF_VALUES[c] * w for c, w in zip(code[:17], REF_WEIGHTS, strict=True)) % 31
    return REF_VALUES[code[17]] == (0 if c18 == 31 else c18)


VALID = ["91350100M000100Y43",  # the example of GB 32100-2015
         "91330100716105852F", "9144030071526726XG", "91110000802100433B", "91110108551385082Q"]
INVALID = ["91350100M000100Y44", "91330100716105852E", "9144030071526726X", "91350100M000100Y430",
           "91350100O000100Y43", "91350100M000100I43", "9135010OM000100Y4Z", ""]


def test_credit_code_check_character_against_the_standards_weights() -> None:
    for code in VALID:
        assert reference_valid(code), code
        assert credit_code_problem(code) is None, code
    for code in INVALID:
        assert not reference_valid(code), code
        assert credit_code_problem(code) is not None, code
    # every single-character typo of a valid code is caught by both
    base = VALID[0]
    for i in range(18):
        for c in "0123456789ABCDEFGHJKLMNPQRTUWXY":
            typo = base[:i] + c + base[i + 1:]
            assert (credit_code_problem(typo) is None) == reference_valid(typo) == (typo == base)


def test_config_refuses_a_wrong_credit_code_and_names_the_field() -> None:
    data = {"site": {"enterprise_id": "e1", "credit_code": "91350100M000100Y44"}}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    text = str(err.value)
    assert "site.credit_code" in text and "check character is '4'" in text and "'3'" in text
    ok = parse_config({"site": {"enterprise_id": "e1", "credit_code": " 91350100m000100y43 "}})
    assert ok.site.credit_code == "91350100M000100Y43"


# ------------------------------------------------------------------------------------------------ display rule


def thirteen() -> list[Asset]:
    """13 digital machines; only `a0` is bound to a device (so live D2 can be 1/13)."""
    return [Asset(id=f"a{i}", name=f"机 {i}", workshop="w", line=None, category=None, usage="production",
                  status="in_service", commissioned=None, is_cnc=i == 0, is_digital=True, digital_basis=None,
                  is_key_process=False, original_value=None, device="m1" if i == 0 else None) for i in range(13)]


def test_one_display_rule_1_of_13_is_7_6_percent_in_every_output(tmp_path: Path) -> None:
    assert pct(1, 13) == "7.6 %" and f"{100 / 13:.1f}" == "7.7"  # what rounding would show
    fig = Figure("D2", 1, 13, 0.55)
    assert fig.to_dict()["display"] == "7.6 %"
    assert fmt_rate(fig.to_dict()).startswith("7.6 %  [1/13]")  # collector status / demo screen
    # the report: summary table and the figures CSV (truncated, never rounded: 0.076923 not 0.076924)
    store = StatusStore(tmp_path / "status.db", H)
    store.write([], [], {("m1", b): b + 10.0 for b in range(int(t(1)), int(t(1, 12)), H)},
                set(range(int(t(1)), int(t(1, 12)), H)))
    cfg = CollectorConfig(site=SiteConfig(enterprise_id="e1", workshop="w"), indicators=IndicatorConfig(bucket=H))
    res = compute(cfg, thirteen(), store, NOV, AFTER_CLOSE)
    assert (res.figure("D2").numerator, res.figure("D2").denominator) == (1, 13)
    page = render_html(res)
    assert re.search(r"<td>D2</td><td>数字化设备联网率</td><td class=\"n\">1</td><td class=\"n\">13</td>"
                     r"<td class=\"n\">7.6 %</td>", page)
    figs = render_figures_csv(res).splitlines()
    d2 = next(line for line in figs if line.startswith("enterprise,D2,"))
    assert ",1,13,0.076923," in d2
    d1 = next(line for line in figs if line.startswith("enterprise,D1,"))
    assert ",1,13,0.076923," in d1
    d3 = next(line for line in figs if line.startswith("enterprise,D3,"))
    assert ",13,13,1.000000," in d3


def one_device_config(state_dir: Path, broker_port: int) -> dict[str, Any]:
    """imm-01 of the demo (served by the simulator) and 12 digital machines that are not connected."""
    demo = yaml.safe_load((ROOT / "config/demo.yaml").read_text(encoding="utf-8"))
    dev = copy.deepcopy(next(d for d in demo["devices"] if d["id"] == "imm-01"))
    dev["endpoint"] = f"tcp://127.0.0.1:{free_port()}"
    dev["interval"] = 0.3
    return {"site": demo["site"], "mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}"}, "state_dir": str(state_dir),
            "http": {"listen": f"127.0.0.1:{free_port()}"},
            "indicators": {"publish_interval": 0.5, "bucket": 1.0, "live_window": 1.5, "allow_simulated": True},
            "devices": [dev],
            "assets": [{"id": f"x-{i}", "name": f"未联网设备 {i}", "is_digital": True} for i in range(12)]}


@pytest.mark.integration
@needs_chromium
async def test_1_of_13_shows_7_6_on_the_status_page_collector_status_and_the_mqtt_snapshot(
        broker: MosquittoProcess, recorder: Recorder, state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw_api = pytest.importorskip("playwright.async_api", reason="playwright (pip, dev extra) is not installed")
    cfg = parse_config(one_device_config(state_dir, broker.port))
    workshop = Workshop(cfg)
    await workshop.start()
    collector = Collector(cfg, Settings())
    await collector.start()
    http = HttpServer(collector, config_path=None)
    await http.start()
    try:
        def snapshot_1_of_13() -> dict[str, Any] | None:
            m = recorder.last("/indicators")
            body = m.json() if m else None
            d2 = body["figures"]["D2"] if body else None
            return body if d2 and (d2["numerator"], d2["denominator"]) == (1, 13) else None

        snap = await recorder.wait_for(snapshot_1_of_13, 20, "the MQTT snapshot with D2 = 1/13")
        assert snap["figures"]["D2"]["display"] == "7.6 %"  # the retained MQTT snapshot
        async with pw_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{http.port}/")
                await page.wait_for_function(
                    "document.querySelector('#card-D2 [data-field=detail]').textContent.startsWith('1 / 13')",
                    timeout=15_000)
                assert await page.text_content("#card-D2 [data-field=value]") == "7.6 %"
            finally:
                await browser.close()
        capsys.readouterr()
        await asyncio.to_thread(main, ["status", "--url", f"http://127.0.0.1:{http.port}"])
        out = capsys.readouterr().out
        assert "7.6 %" in out and "[1/13]" in out and "7.7 %" not in out
    finally:
        await http.stop()
        await collector.stop()
        await workshop.stop()


# ------------------------------------------------------------------------------------------------ first good


def test_first_good_data_is_never_before_the_collectors_first_run(tmp_path: Path) -> None:
    store = StatusStore(tmp_path / "status.db", H)
    started = t(10) + 1234.0  # 10 Nov 00:20:34, inside the 00:00 bucket
    StatusTracker(store, ["m1"], clock=lambda: started)
    assert store.first_run() == started
    StatusTracker(store, ["m1"], clock=lambda: started + 9999)  # a restart keeps the first run
    assert store.first_run() == started
    first_bucket = int(t(10))
    store.write([], [], {("m1", b): b + 2000.0 for b in range(first_bucket, int(t(1, 12)), H)},
                set(range(first_bucket, int(t(1, 12)), H)))
    cfg = CollectorConfig(site=SiteConfig(enterprise_id="e1", workshop="w"), indicators=IndicatorConfig(bucket=H))
    row = next(r for r in compute(cfg, thirteen(), store, NOV, AFTER_CLOSE).devices if r.asset.id == "a0")
    assert row.evidence is not None and row.evidence.first_good == started  # not the bucket's 00:00
    assert row.to_dict(TZ)["first_good"] == "2026-11-10T00:20:34+08:00"
    # a store written before first_run was kept: its first uptime bucket stands in (never the upgrade's start)
    old = StatusStore(tmp_path / "old.db", H)
    old.write([], [], {}, {int(t(3))})
    StatusTracker(old, ["m1"], clock=lambda: t(20))
    assert old.first_run() == t(3)


# ------------------------------------------------------------------------------------------------ the report


def assessor_config(tmp_path: Path, pledge: str | None = None) -> Path:
    """The demo workshop with a credit code, the 4-row register import (one scrapped press) and maybe a pledge."""
    path = demo_config(tmp_path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["site"]["credit_code"] = "91330402MA2B8XKF98"
    if pledge is not None:
        data["indicators"]["pledge"] = pledge
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    (tmp_path / "reg.csv").write_text(REGISTER_CSV, encoding="utf-8")
    # imported before the month (a closed month is computed with the register in force at its end)
    oct1 = dt.datetime(2025, 10, 1, tzinfo=zoneinfo.ZoneInfo(TZ)).timestamp()
    install(read_register_csv(tmp_path / "reg.csv"), tmp_path / "reg.csv",
            tmp_path / "state" / IMPORTED_REGISTER, now=oct1)
    fill_state(tmp_path / "state")
    return path


def simulated_month(tmp_path: Path, cfg_path: Path) -> PeriodResult:
    """November 2025 of the demo, with the marks h14-identity fills set by hand: cnc-01 simulated, cnc-02's
    server certificate changed on 10 Nov."""
    cfg = parse_config(yaml.safe_load(cfg_path.read_text(encoding="utf-8")))
    store = StatusStore(tmp_path / "state" / "status.db", cfg.indicators.bucket)
    nov = periods.month(2025, 11, TZ)
    res = compute(cfg, load_register(cfg, tmp_path / "state"), store, nov)
    store.close()
    res.simulated = ["cnc-01"]
    for r in res.devices:
        r.simulated = r.asset.id == "cnc-01"
    res.identity_warnings = [{"device": "cnc-02", "time": nov.start + 9 * 86400 + 8.5 * 3600,
                              "before": {"application_uri": "urn:jx:cnc-02", "thumbprint": "1f2e3d"},
                              "after": {"application_uri": "urn:sim:cnc-02", "thumbprint": "9a8b7c"}}]
    return res


async def page_text(html_file: Path, shot: Path | None = None) -> dict[str, Any]:
    """The page as headless Chromium renders it: body text, the text of a few parts, optional screenshot."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(html_file.as_uri())
            out = {"body": await page.inner_text("body"),
                   "params": await page.inner_text("table.params"),
                   "out_rows": await page.eval_on_selector_all(
                       "tr.out", "rows => rows.map(r => [r.dataset.id, r.innerText, getComputedStyle(r.cells[0]).color])"),
                   "banner": await page.inner_text("#simulated-banner") if await page.query_selector(
                       "#simulated-banner") else None,
                   "evidence_names": await page.eval_on_selector_all(
                       "#devices-evidence tr[data-id]", "rows => rows.map(r => r.cells[1].innerText)")}
            if shot is not None:
                await page.screenshot(path=str(shot), full_page=True)
            return out
        finally:
            await browser.close()


@needs_chromium
async def test_zh_report_read_back_from_chromium(tmp_path: Path) -> None:
    pytest.importorskip("playwright.async_api", reason="playwright (pip, dev extra) is not installed")
    res = simulated_month(tmp_path, assessor_config(tmp_path))
    footer = report_footer_data(res.cfg, tmp_path / "state", res.period)
    [html_file] = write_package(res, tmp_path / "out", ["html"], "zh", None, footer)
    shot = tmp_path / "report.png"
    got = await page_text(html_file, shot)
    body, params = got["body"], got["params"]
    # header: enterprise, 统一社会信用代码, county; dates as an assessor reads them
    for text in ("嘉兴恒达精密机械有限公司", "统一社会信用代码\t91330402MA2B8XKF98", "嘉兴市 南湖区",
                 "2025年11月1日 00:00 – 11月30日 24:00", "2025年12月3日 24:00"):
        assert text in body, text
    assert "T00:00:00+08:00" not in body and "2025-12-01T" not in body  # no ISO stamps, no exclusive end
    # 计算参数: Chinese labels with units, plain values, no internal keys or JSON quoting
    for label, value in (("时段长度", "5 分钟"), ("覆盖率阈值", "80 %"), ("有效天数阈值", "50 %"),
                         ("数据停滞判定", "15 分钟"), ("应有时间口径", "采集器运行时间"), ("统计范围", "全部生产及辅助设备")):
        assert f"{label}\t{value}" in params, (label, params)
    for raw in ("bucket_s", "day_share", "stale_after", '"collector uptime"', "expected_time", "{"):
        assert raw not in body, raw
    # rows outside U: greyed, and say why they do not count
    out_rows = got["out_rows"]  # each in both tables: register (计入统计范围) and evidence (是否联网)
    assert sorted(rid for rid, _, _ in out_rows) == ["M-003", "M-003", "meter-01", "meter-01"]
    for rid, text, color in out_rows:
        assert text.count("不计入（报废）" if rid == "M-003" else "不计入（非生产）") == 1, (rid, text)
        assert color == "rgb(158, 158, 158)"  # greyed
    assert any("旧冲床" in text for rid, text, _ in out_rows if rid == "M-003")
    # device names in the evidence table too
    assert "立式加工中心 VMC-850" in " ".join(got["evidence_names"]) and "旧冲床" in " ".join(got["evidence_names"])
    # the simulated device: a banner above everything and on the figures, a mark on its row
    assert got["banner"] == f"{SIMULATED_BANNER}（cnc-01）"
    # at the top, above the figures, and inside each of the two charts (a chart copied out keeps it)
    assert body.count(SIMULATED_BANNER) == 4 and "立式加工中心 VMC-850模拟设备" in body
    assert "cnc-01 立式加工中心 VMC-850 [模拟设备]</text>" in html_file.read_text(encoding="utf-8")  # coverage chart
    # 提示 in Chinese: the identity change with both identities and the time; no English register warning
    assert ("cnc-02 数控车床 CK6150：设备身份变化（2025年11月10日 08:30）原身份 application_uri=urn:jx:cnc-02; "
            "thumbprint=1f2e3d → 新身份 application_uri=urn:sim:cnc-02; thumbprint=9a8b7c") in body
    assert "is_cnc" not in body and "is_digital" not in body
    # first good data of the demo month, shown as a date, and the footer
    assert "2025年11月1日 00:00" in body and "2025年11月30日 24:00" in body
    for text in ("企业承诺", "本企业承诺：本报告所列设备台账真实、完整", "签名密钥指纹\t未签名 / unsigned", "外部存证回执",
                 "台账版本\t导入于 2025年10月1日 00:00 · 4 条 · sha256", "企业盖章"):
        assert text in body, text
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    if os.environ.get("REPORT_SCREENSHOT"):  # REPORT_SCREENSHOT=docs/img/report-example.png refreshes the docs
        shutil.copy(shot, os.environ["REPORT_SCREENSHOT"])


@needs_chromium
async def test_en_report_read_back_from_chromium(tmp_path: Path) -> None:
    pytest.importorskip("playwright.async_api", reason="playwright (pip, dev extra) is not installed")
    res = simulated_month(tmp_path, assessor_config(tmp_path, pledge="We pledge the register is true (test)."))
    res.identity_warnings[0]["time"] = "2025-11-10T08:30:00+08:00"  # as a chain record's JSON would hold it
    [html_file] = write_package(res, tmp_path / "out", ["html"], "en", None,
                                report_footer_data(res.cfg, tmp_path / "state", res.period))
    got = await page_text(html_file)
    body, params = got["body"], got["params"]
    assert "1 Nov 2025 00:00 – 30 Nov 24:00" in body and "Unified social credit code\t91330402MA2B8XKF98" in body
    for label, value in (("Bucket length", "5 min"), ("Coverage threshold", "80 %"),
                         ("Expected time", "collector uptime")):
        assert f"{label}\t{value}" in params, (label, params)
    out_rows = [(rid, text) for rid, text, _ in got["out_rows"]]
    assert all(("not counted (scrapped)" if rid == "M-003" else "not counted (non-production)") in text
               for rid, text in out_rows) and len(out_rows) == 4
    assert got["banner"] == f"{SIMULATED_BANNER_EN} (cnc-01)"
    assert "device identity changed at 10 Nov 2025 08:30; before: application_uri=urn:jx:cnc-02" in body
    assert "unsigned / 未签名" in body and re.search(r"Enterprise pledge\s+We pledge the register is true \(test\)\.", body)
    assert "数字化设备联网率" not in body and "不计入" not in body


def test_register_warnings_follow_the_report_language(tmp_path: Path) -> None:
    data = yaml.safe_load(demo_config(tmp_path).read_text(encoding="utf-8"))
    data["assets"].append({"id": "odd-1", "name": "怪车床", "is_cnc": True, "is_digital": False})
    cfg = parse_config(data)
    res = compute(cfg, load_register(cfg, tmp_path / "state"), StatusStore(Path(":memory:"), 300),
                  periods.month(2025, 11, TZ))
    zh, en = render_html(res, "zh"), render_html(res, "en")
    assert "odd-1 怪车床：台账标为数控设备，但未标为数字化设备" in zh and "is_cnc but not" not in zh
    assert "odd-1 怪车床: is_cnc but not is_digital" in en
    assert "odd-1 怪车床: is_cnc but not is_digital" in json.dumps(res.to_dict(), ensure_ascii=False)


# ------------------------------------------------------------------------------------------------ PDF


def pdf_pages(pdf: Path) -> list[str]:
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, check=True,
                          timeout=60).stdout.decode("utf-8")
    return text.split("\f")


needs_pdftotext = pytest.mark.skipif(shutil.which("pdftotext") is None,
                                     reason="pdftotext is not installed (apt-get install poppler-utils)")


@needs_chromium
@needs_pdftotext
def test_report_as_pdf_holds_the_enterprise_and_d2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = assessor_config(tmp_path)
    out = tmp_path / "out"
    assert main(["report", "-c", str(cfg_path), "--period", "2025-11", "--format", "pdf", "--out", str(out)]) == 0
    pdf = out / "report-2025-11.pdf"
    assert capsys.readouterr().out.strip().endswith("report-2025-11.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    pages = [p for p in pdf_pages(pdf) if p.strip()]
    text = "\n".join(pages)
    assert "嘉兴恒达精密机械有限公司" in text and "91330402MA2B8XKF98" in text
    # 5 networked (cnc-01, cnc-02, knit-01, comp-01, press-01; pack-01 has no data that month) of 10 digital in U
    # (the demo's 8 + M-001 + M-004): 50.0 %
    d2 = re.search(r"全企业\s+D2\s+数字化设备联网率\s+5\s+10\s+50\.0 %\s+≥ 55 %\s+✘ 未达标", text)
    assert d2, text[:3000]
    assert len(pages) >= 2 and all(re.search(r"第\s*\d+\s*页\s*/\s*共\s*\d+\s*页", p) for p in pages)
    assert SIMULATED_BANNER not in text  # nothing simulated here


@needs_chromium
@needs_pdftotext
def test_pdf_carries_the_simulated_banner_on_every_page(tmp_path: Path) -> None:
    res = simulated_month(tmp_path, assessor_config(tmp_path))
    [pdf] = write_package(res, tmp_path / "out", ["pdf"], "zh")
    pages = [p for p in pdf_pages(pdf) if p.strip()]
    assert len(pages) >= 3
    assert all(SIMULATED_BANNER in p for p in pages), [p[:200] for p in pages]


def test_pdf_without_chromium_exits_2_and_names_the_package(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_path = assessor_config(tmp_path)
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "no-such-browser"))
    rc = main(["report", "-c", str(cfg_path), "--period", "2025-11", "--format", "html,pdf",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "apt-get install chromium" in err and "--format pdf" in err
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert not (tmp_path / "state" / "evidence-chain.jsonl").exists()  # and nothing chained


def test_footer_data_stub_shows_the_chain_head(tmp_path: Path) -> None:
    cfg_path = assessor_config(tmp_path)
    cfg = parse_config(yaml.safe_load(cfg_path.read_text(encoding="utf-8")))
    nov = periods.month(2025, 11, TZ)
    before = report_footer_data(cfg, tmp_path / "state", nov)
    assert (before["fingerprint"], before["head"], before["record"], before["anchors"]) == (None, None, None, [])
    assert before["register"]["rows"] == 4  # the import in force at the month's end
    assert main(["report", "-c", str(cfg_path), "--period", "2025-11", "--format", "json",
                 "--out", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "report-2025-11.json").read_text(encoding="utf-8"))
    after = report_footer_data(cfg, tmp_path / "state", nov)
    # the closed month was chained (after the record introducing the new key), so the head is its own record
    assert after["head"]["hash"] == data["chain"]["hash"] == data["evidence"]["head"]["hash"]
    assert after["fingerprint"] == keys.show_fingerprint(keys.load(tmp_path / "state").fingerprint)
    assert data["credit_code"] == "91330402MA2B8XKF98"


def test_device_csv_says_why_a_row_is_not_counted_and_truncates_coverage(tmp_path: Path) -> None:
    cfg_path = assessor_config(tmp_path)
    for lang in ("zh", "en"):
        out = tmp_path / lang
        assert main(["report", "-c", str(cfg_path), "--period", "2025-11", "--format", "csv", "--lang", lang,
                     "--out", str(out)]) == 0
        rows = list(csv.DictReader(io.StringIO((out / "report-2025-11.csv").read_text(encoding="utf-8-sig"))))
        by_id = {r["设备编号" if lang == "zh" else "id"]: r for r in rows}
        excluded, coverage, status = ("不计入原因", "覆盖率", "状态") if lang == "zh" else ("excluded", "coverage", "status")
        assert by_id["M-003"][excluded] == ("报废" if lang == "zh" else "scrapped")
        assert by_id["meter-01"][excluded] == ("非生产" if lang == "zh" else "non_production")
        assert by_id["cnc-01"][excluded] == ""
        assert by_id["imm-01"][coverage] == "0.3666"  # 11/30, truncated
        assert by_id["cnc-01"][status] == ("在用" if lang == "zh" else "in_service")  # en keeps the import's keys
