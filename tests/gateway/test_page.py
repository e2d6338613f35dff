"""The chat page in a real headless Chromium: replies survive the tab, render as Markdown safely, refusals show."""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Locator, Page, Route, async_playwright

from gateway.server import RunningGateway
from tests.support.gateway_harness import content, http_client, reply_text

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
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail("REQUIRE_BROWSER is set but /usr/bin/chromium is missing: apt-get install chromium")
        pytest.skip("Debian's chromium is not installed: run `apt-get install chromium` as root, then `make test`")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.mark.parametrize("cut", ["reload", "close and reopen"])
async def test_a_reply_survives_the_tab_going_away_and_shows_exactly_once(
    browser: Browser, gateway: RunningGateway, cut: str
) -> None:
    message = content("page", "[[len=2500 chunk=5 delay=0.004]]")
    page = await browser.new_page()
    try:
        await page.goto(gateway.base_url + "/")
        await page.fill("#composer-input", message)
        await page.click("#send")
        await page.wait_for_function(
            """() => {
                const all = document.querySelectorAll('.message[data-role="assistant"]');
                return all.length > 0 && [...all[all.length - 1].dataset.text].length > 300;
            }""",
            timeout=10_000,
        )
        assert "?c=" in page.url
        if cut == "reload":
            await page.reload()
        else:
            url = page.url
            await page.close()
            page = await browser.new_page()
            await page.goto(url)

        assistant = page.locator('.message[data-role="assistant"]').last
        await assistant.and_(page.locator('[data-status="complete"]')).wait_for(timeout=15_000)
        message_id = await assistant.get_attribute("data-message-id")
        shown = await assistant.get_attribute("data-text")
        async with http_client(gateway) as client:
            saved = (await client.get(f"/v1/messages/{message_id}")).json()
    finally:
        await page.close()

    assert saved["status"] == "complete"
    assert saved["content"] == reply_text(message)
    assert shown == saved["content"]


def saying(label: str, text: str) -> str:
    """A message whose reply is `text`, streamed slowly enough that the page renders it many times on the way."""
    return content(label, f"[[say={urllib.parse.quote(text, safe='')} chunk=4 delay=0.02]]")


async def send(page: Page, gateway: RunningGateway, message: str) -> Locator:
    """Opens the page, sends `message`, and returns its reply's element once the reply started."""
    await page.goto(gateway.base_url + "/")
    await page.fill("#composer-input", message)
    await page.click("#send")
    assistant = page.locator('.message[data-role="assistant"]')
    await assistant.wait_for(timeout=10_000)
    return assistant


async def ended(page: Page, gateway: RunningGateway, assistant: Locator) -> dict[str, Any]:
    """Waits for the reply to end on the page; returns it as saved, after checking the page holds its exact text."""
    await assistant.and_(page.locator(':not([data-status="streaming"])')).wait_for(timeout=15_000)
    message_id = await assistant.get_attribute("data-message-id")
    async with http_client(gateway) as client:
        saved: dict[str, Any] = (await client.get(f"/v1/messages/{message_id}")).json()
    assert await assistant.get_attribute("data-text") == saved["content"]
    return saved


MARKDOWN = """Here is the plan:

- read the **file**
- count the lines

```python
def lines(path):
    return len(open(path).read().splitlines())
```

| name | lines |
|------|------:|
| a.py | 12 |
| b.py | 7 |

See [the docs](https://example.com/docs?q=1&r=2) for more.

The end.
"""
CODE = "def lines(path):\n    return len(open(path).read().splitlines())\n"


async def test_a_reply_renders_as_markdown_while_it_streams(browser: Browser, gateway: RunningGateway) -> None:
    page = await browser.new_page(permissions=["clipboard-read", "clipboard-write"])
    try:
        assistant = await send(page, gateway, saying("markdown", MARKDOWN))
        # rendered as it streams: the code block shows before the reply has ended
        await page.locator('.message[data-status="streaming"] .content pre > code').wait_for(timeout=15_000)
        saved = await ended(page, gateway, assistant)
        shown = assistant.locator(".content")
        await shown.locator("p", has_text="The end.").wait_for(timeout=5_000)

        assert await shown.locator("ul > li").all_text_contents() == ["read the file", "count the lines"]
        assert await shown.locator("ul strong").text_content() == "file"

        code = shown.locator(".code-block pre > code")
        assert await code.text_content() == CODE
        assert await code.get_attribute("class") == "language-python"
        copy = shown.locator(".code-block .copy-code")
        await copy.click()
        await page.wait_for_function("() => document.querySelector('.copy-code').textContent === 'Copied'")
        assert await page.evaluate("navigator.clipboard.readText()") == CODE

        assert await shown.locator("table th").all_text_contents() == ["name", "lines"]
        assert await shown.locator("table tbody tr").count() == 2
        assert await shown.locator("table td").nth(1).get_attribute("align") == "right"

        link = shown.locator("a", has_text="the docs")
        assert await link.get_attribute("href") == "https://example.com/docs?q=1&r=2"
        assert await link.get_attribute("target") == "_blank"
        assert await link.get_attribute("rel") == "noopener noreferrer"
    finally:
        await page.close()
    assert saved["status"] == "complete"
    assert saved["content"] == MARKDOWN


async def test_a_fast_reply_is_rendered_at_most_once_a_frame(browser: Browser, gateway: RunningGateway) -> None:
    page = await browser.new_page()
    try:
        await page.goto(gateway.base_url + "/")
        await page.evaluate(
            """() => {
                window.__frames = 0;
                window.__renders = 0;
                const tick = () => { window.__frames++; requestAnimationFrame(tick); };
                requestAnimationFrame(tick);
                const rendered = (r) => r.target.matches('[data-role="assistant"] .content');
                const count = (records) => { window.__renders += records.filter(rendered).length; };
                const messages = document.getElementById('messages');
                new MutationObserver(count).observe(messages, { childList: true, subtree: true });
            }"""
        )
        await page.fill("#composer-input", content("fast", "[[len=3000 chunk=1]]"))
        await page.click("#send")
        assistant = page.locator('.message[data-role="assistant"]')
        await assistant.wait_for(timeout=10_000)
        saved = await ended(page, gateway, assistant)
        await page.wait_for_function("() => window.__renders > 0")
        renders, frames = await page.evaluate("[window.__renders, window.__frames]")
    finally:
        await page.close()
    assert len(saved["content"]) == 3000
    assert renders <= frames + 1, (renders, frames)


HOSTILE = """Before <img src=x onerror="window.__pwned = 'img'"> after.

<script>window.__pwned = 'script'</script>

<div onmouseover="window.__pwned = 'div'">a raw block</div>

[a link](javascript:window.__pwned='link') and ![an image](https://example.com/track.png)

The end.
"""


async def test_html_in_a_reply_is_shown_as_text_and_never_runs(browser: Browser, gateway: RunningGateway) -> None:
    page = await browser.new_page()
    try:
        assistant = await send(page, gateway, saying("hostile", HOSTILE))
        saved = await ended(page, gateway, assistant)
        shown = assistant.locator(".content")
        await shown.locator("p", has_text="The end.").wait_for(timeout=5_000)

        assert await page.evaluate("typeof window.__pwned") == "undefined"
        assert await page.locator("#messages :is(img, script, [onerror], [onmouseover])").count() == 0
        assert await page.locator('#messages a[href^="javascript:" i]').count() == 0
        text = await shown.text_content() or ""
        assert "<img src=x onerror=\"window.__pwned = 'img'\">" in text  # the model's HTML, as it wrote it
        assert "<script>" in text
        image = shown.locator("a", has_text="an image")  # an image is a link, never loaded by itself
        assert await image.get_attribute("href") == "https://example.com/track.png"
        await shown.locator("a", has_text="a link").click()  # a javascript: link lost its href
        assert await page.evaluate("typeof window.__pwned") == "undefined"
    finally:
        await page.close()
    assert saved["content"] == HOSTILE


async def test_an_error_reply_shows_its_status_and_error(browser: Browser, gateway: RunningGateway) -> None:
    page = await browser.new_page()
    try:
        assistant = await send(page, gateway, content("page error", "[[len=400 chunk=5 error_after=100]]"))
        saved = await ended(page, gateway, assistant)
        assert await assistant.get_attribute("data-status") == "error"
        assert await assistant.locator(".badge").text_content() == "Error"
        note = assistant.locator(".note")
        assert await note.is_visible()
        assert await note.text_content() == saved["error"]
    finally:
        await page.close()
    assert saved["status"] == "error"
    assert saved["error"]
    assert len(saved["content"]) == 100


async def test_a_stopped_reply_shows_it_was_cancelled(browser: Browser, gateway: RunningGateway) -> None:
    page = await browser.new_page()
    try:
        assistant = await send(page, gateway, content("page stop", "[[len=3000 chunk=5 delay=0.01]]"))
        await page.click("#stop")
        saved = await ended(page, gateway, assistant)
        assert await assistant.get_attribute("data-status") == "cancelled"
        assert await assistant.locator(".badge").text_content() == "Cancelled"
        assert await assistant.locator(".note").text_content() == "Stopped before the end."
        assert await page.locator("#stop").is_hidden()
    finally:
        await page.close()
    assert saved["status"] == "cancelled"
    assert len(saved["content"]) < 3000


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [(429, "resource_exhausted", "Too many replies running"), (503, "unavailable", "The service is busy.")],
)
async def test_a_refused_reply_says_when_to_try_again_and_keeps_the_message(
    browser: Browser, gateway: RunningGateway, status: int, code: str, message: str
) -> None:
    async def refuse(route: Route) -> None:
        if route.request.method != "POST":
            await route.continue_()
            return
        await route.fulfill(
            status=status,
            headers={"Retry-After": "5"},
            content_type="application/json",
            body=json.dumps({"error": {"code": code, "message": message}}),
        )

    page = await browser.new_page()
    try:
        await page.route("**/v1/replies", refuse)
        await page.goto(gateway.base_url + "/")
        typed = content("refused")
        await page.fill("#composer-input", typed)
        await page.click("#send")
        notice = page.locator("#error.refusal")
        await notice.wait_for(timeout=10_000)
        assert await notice.text_content() == f"{message.rstrip('.')}; try again in 5 s"
        assert await page.input_value("#composer-input") == typed
        assert await page.locator(".message").count() == 0
        assert await page.locator("#send").is_enabled()
    finally:
        await page.close()
