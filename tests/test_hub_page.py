"""The hub's bulletin page in headless Chromium (Playwright), numbers read back from the page; and its HTTP
answers (formats, Host check). Skipped with the reason where chromium or Playwright is missing."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from collector.hub import db
from collector.hub.config import parse_hub_config
from collector.hub.page import serve
from tests.hubsupport import pg_url  # noqa: F401  (fixture)
from tests.support.broker import free_port
from tests.test_hub_bulletin import city  # noqa: F401  (fixture)

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def page_url(city: Any, pg_url: str) -> Any:  # noqa: F811
    port = free_port()
    cfg = parse_hub_config({"database": pg_url, "http": {"listen": f"127.0.0.1:{port}"}})
    pool = db.open_pool(pg_url)
    server = serve(cfg, pool)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        pool.close()


def get(url: str, host: str | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_page_answers_each_format_and_checks_host(page_url: str) -> None:
    status, ctype, body = get(page_url + "/bulletin?period=2026-11&format=json")
    assert status == 200 and ctype.startswith("application/json")
    assert json.loads(body)["total"]["figures"]["D1"]["numerator"] == 17
    status, ctype, body = get(page_url + "/bulletin?period=2026-11&format=csv&county=" + quote("南湖区"))
    assert status == 200 and ctype.startswith("text/csv") and body.count("\n") == 2  # header and 南湖区
    assert get(page_url + "/bulletin?period=2026-13")[0] == 400
    assert get(page_url + "/bulletin?period=2026-11&county=" + quote("上海"))[0] == 400
    assert get(page_url + "/bulletin?period=2026-11", host="evil.example:80")[0] == 421
    assert get(page_url + "/healthz")[1].startswith("text/plain")


@pytest.mark.integration
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
async def test_bulletin_page_in_chromium_shows_the_pooled_numbers(page_url: str, tmp_path: Path) -> None:
    pw_api = pytest.importorskip("playwright.async_api", reason="playwright (pip, dev extra) is not installed")
    async with pw_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(page_url + "/bulletin?period=2026-11")
            assert await page.text_content("#title") == "嘉兴市智能制造设备指标月度通报 · 2026-11"

            async def cells(county: str) -> list[str]:
                return [str(t).strip() for t in await page.locator(f"tr[data-county='{county}'] td").all_text_contents()]

            assert await cells("南湖区") == ["南湖区", "1", "1", "72.7 % (8/11)", "1 (100.0 %)", "50.0 % (5/10)",
                                           "0 (0.0 %)", "0", "0", "0"]
            assert await cells("秀洲区") == ["秀洲区", "1", "1", "40.0 % (2/5)", "0 (0.0 %)", "60.0 % (3/5)",
                                           "1 (100.0 %)", "0", "1", "0"]
            assert await cells("海宁市") == ["海宁市", "1", "0", "—", "—", "—", "—", "1", "0", "0"]
            assert await cells("嘉兴市") == ["嘉兴市", "4", "3", "65.3 % (17/26)", "2 (66.6 %)", "54.2 % (19/35)",
                                           "2 (66.6 %)", "1", "1", "0"]
            anomaly = await page.text_content("#lists tr.anomaly")
            assert anomaly is not None and "秀洲精工" in anomaly and "数据异常：历史记录被改写" in anomaly
            nonrep = await page.text_content("#lists tr.nonrep")
            assert nonrep is not None and "海宁纺织" in nonrep
            bars = await page.locator("#plot rect.bar-D2").count()
            assert bars == 10  # nine counties and the city
            shot = tmp_path / "bulletin.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("HUB_SCREENSHOT"):
                shutil.copy(shot, os.environ["HUB_SCREENSHOT"])
            await page.goto(page_url + "/bulletin?period=2026-11&lang=en")
            assert "monthly bulletin" in str(await page.text_content("#title"))
            assert (await cells("嘉兴市"))[3] == "65.3 % (17/26)"
        finally:
            await browser.close()
