"""The chat page in a real headless Chromium: send, reload mid-reply, see the whole reply exactly once."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.server import RunningGateway
from tests.support.gateway_harness import assert_streaming, content, http_client, reply_text
from tests.support.model_server import ModelServer

CHROMIUM = Path("/usr/bin/chromium")
# Chromium's own background traffic is refused on this closed network; keep it quiet
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[object]:
    if not CHROMIUM.exists():
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail("REQUIRE_BROWSER is set but /usr/bin/chromium is missing: apt-get install chromium")
        pytest.skip("Debian's chromium is not installed: run `apt-get install chromium` as root, then `make test`")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.mark.parametrize("cut", ["reload", "close and reopen"])
async def test_a_reply_survives_the_tab_going_away_and_shows_exactly_once(
    browser, gateway: RunningGateway, model_server: ModelServer, cut
):
    with model_server.gate() as gate:
        message = content("page", f"[[len=2500 {gate.at(300)}]]")
        page = await browser.new_page()
        try:
            await page.goto(gateway.base_url + "/")
            await page.fill("#composer-input", message)
            await page.click("#send")
            await page.wait_for_function(
                """() => {
                    const all = document.querySelectorAll('.message[data-role="assistant"] .content');
                    return all.length > 0 && [...all[all.length - 1].textContent].length >= 300;
                }""",
                timeout=10_000,
            )
            assert "?c=" in page.url
            message_id = await page.locator('.message[data-role="assistant"]').last.get_attribute("data-message-id")
            async with http_client(gateway) as client:
                await assert_streaming(client, message_id)
            if cut == "reload":
                await page.reload()
            else:
                url = page.url
                await page.close()
                page = await browser.new_page()
                await page.goto(url)
            gate.release()

            assistant = page.locator('.message[data-role="assistant"]').last
            await assistant.and_(page.locator('[data-status="complete"]')).wait_for(timeout=15_000)
            assert await assistant.get_attribute("data-message-id") == message_id
            shown = await assistant.locator(".content").text_content()
            async with http_client(gateway) as client:
                saved = (await client.get(f"/v1/messages/{message_id}")).json()
        finally:
            await page.close()

    assert saved["status"] == "complete"
    assert saved["content"] == reply_text(message)
    assert shown == saved["content"]
