"""The status page in a real headless browser (Debian's chromium driven by Playwright) against the demo workshop.

The page is loaded once and never reloaded: a machine taken off the network must turn `offline` on it, and the
live 联网率 must drop, by the page's own refresh. Skipped (with the reason) where chromium or Playwright is
missing; .ci/run installs both.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil

import pytest

from tests.support.broker import MosquittoProcess
from tests.test_http import CONNECTED, Site, site  # noqa: F401 - the fixture

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture
def playwright_api() -> object:
    return pytest.importorskip("playwright.async_api", reason="playwright (pip, dev extra) is not installed")


async def test_page_shows_every_device_and_an_offline_one_turns_offline(
        site: Site, playwright_api: object) -> None:  # noqa: F811
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page()
            requests: list[str] = []
            page.on("request", lambda req: requests.append(req.url))
            await page.goto(site.base + "/")
            await page.wait_for_selector("body[data-loaded='1']", timeout=10_000)
            for dev in CONNECTED:
                await page.wait_for_selector(f"tr[data-device='{dev}'][data-state='online']", timeout=10_000)
            # last values are on the page
            temp = await page.text_content("tr[data-device='imm-01'] [data-tag='barrel_temp']")
            assert temp is not None and temp.startswith("barrel_temp=") and temp.endswith("°C")
            await page.wait_for_function(
                "document.querySelector('#card-D2 [data-field=detail]').textContent.startsWith('7 / 8')",
                timeout=10_000)
            assert await page.text_content("#card-D2 [data-field=value]") == "87.5 %"
            d1 = await page.text_content("#card-D1 [data-field=detail]")
            assert d1 is not None and d1.startswith("7 / 9") and "target ≥ 70 %" in d1 and "pass" in d1
            assert await page.text_content("#outbox [data-key=MQTT]") == "connected"
            assert await page.text_content("#health") == "ok"

            await site.workshop.stop_device("imm-01")
            row = await page.wait_for_selector("tr[data-device='imm-01'][data-state='offline']", timeout=10_000)
            assert row is not None
            assert await page.text_content("tr[data-device='imm-01'] .state") == "offline"
            await page.wait_for_function(
                "document.querySelector('#card-D2 [data-field=detail]').textContent.startsWith('6 / 8')",
                timeout=10_000)
            assert await page.text_content("#card-D2 [data-field=value]") == "75.0 %"  # 6/8 (rates.pct truncates to 0.1 %)
            # the other machines stayed online on the same page
            assert await page.get_attribute("tr[data-device='cnc-01']", "data-state") == "online"
            # everything the page loaded came from the collector itself (no CDN)
            assert requests and all(u.startswith(site.base) for u in requests), requests
        finally:
            await browser.close()


async def test_page_says_uptime_backlog_stale_values_and_all_offline(
        site: Site, broker: MosquittoProcess, playwright_api: object) -> None:  # noqa: F811
    """Field trial: `up 0.0 h`, `draining yes` over an empty outbox, offline devices' last values at full
    contrast with no age, and `health: ok` with every device offline and nothing else said."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page()
            await page.goto(site.base + "/")
            await page.wait_for_selector("body[data-loaded='1']", timeout=10_000)
            meta = await page.text_content("#meta") or ""
            assert re.search(r" · up \d+ s · 8 devices$", meta), meta  # a young collector: seconds, not "0.0 h"
            assert await page.query_selector("#outbox [data-key=draining]") is None  # nothing waits
            assert not await page.is_visible("#all-offline")
            cell = "tr[data-device='imm-01'] .vals"
            assert "stale" not in (await page.get_attribute(cell, "class") or "")
            live_color = await page.eval_on_selector(cell + " [data-tag=barrel_temp]", "e => getComputedStyle(e).color")

            # a real backlog: the broker goes away, the outbox fills and ages; "draining" appears, then goes
            await asyncio.to_thread(broker.stop)
            try:
                row = await page.wait_for_selector("#outbox [data-key=draining]", timeout=20_000)
                assert row is not None
                assert (await row.text_content() or "").startswith(("yes", "NO — "))
            finally:
                await asyncio.to_thread(broker.start)
            await page.wait_for_selector("#outbox [data-key=draining]", state="detached", timeout=30_000)

            for dev in CONNECTED:
                await site.workshop.stop_device(dev)
            await page.wait_for_selector("#all-offline", state="visible", timeout=30_000)
            notice = await page.text_content("#all-offline") or ""
            assert "全部设备离线" in notice and "all devices offline" in notice
            for dev in CONNECTED:
                await page.wait_for_selector(f"tr[data-device='{dev}'][data-state='offline']", timeout=20_000)
            assert "stale" in (await page.get_attribute(cell, "class") or "")
            age = await page.text_content(cell + " .age") or ""
            assert re.fullmatch(r"last values, \d+ s ago", age), age
            grey = await page.eval_on_selector(cell + " [data-tag=barrel_temp]", "e => getComputedStyle(e).color")
            assert grey == "rgb(107, 114, 128)" and grey != live_color, (grey, live_color)
            temp = await page.text_content(cell + " [data-tag=barrel_temp]") or ""
            assert temp.startswith("barrel_temp=") and temp.endswith("°C")  # the last value is still there
        finally:
            await browser.close()
            for dev in CONNECTED:
                await site.workshop.start_device(dev)
