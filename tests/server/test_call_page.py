"""The web page's messages, in headless Chromium against the front end on a fake engine: no
camera permission, server busy (and the retry after Retry-After), auth failure, a call ended by the server with its reason, and
a call dropped by a server gone silent, each shown as a message a person can act on; typed
text goes to the engine and the page shows it."""
from __future__ import annotations

import pytest

from tests.server.call_helpers import chromium, front_end

pytestmark = pytest.mark.timeout(120)
MESSAGE = "document.getElementById('message').textContent"


async def open_page(browser, url: str):
    page = await browser.new_page()
    await page.goto(url + "/")
    await page.wait_for_function("document.getElementById('status').textContent !== 'Loading…'")
    return page


async def message_after_call(page) -> str:
    await page.click("#call")
    await page.wait_for_function(f"{MESSAGE}.length > 0", timeout=15_000)
    return await page.evaluate(MESSAGE)


async def test_no_camera_permission_says_how_to_allow_it():
    async with front_end() as (_, url), chromium(fake_media=False) as browser:
        page = await open_page(browser, url)
        await page.wait_for_function(f"{MESSAGE}.length > 0")
        text = await page.evaluate(MESSAGE)
        assert "refused" in text or "No camera" in text, text
        assert await page.is_disabled("#call")


async def test_a_busy_server_and_a_missing_token_are_explained():
    async with front_end(capacity=0) as (front, url), chromium() as browser:
        page = await open_page(browser, url)
        text = await message_after_call(page)
        assert text == ("The server is busy: all 0 call slot(s) are in use; try again in 2 s. "
                        "Calling again in 2 s (hang up to stop)."), text
        assert "Busy — calling again in 2 s" in await page.text_content("#status")
        assert await page.evaluate("window.duplex.state") == "waiting"
        await page.click("#hangup")  # stops the retries
        assert await page.evaluate("window.duplex.state") == "idle"
        await page.wait_for_timeout(2500)
        assert await page.evaluate("window.duplex.state") == "idle", "no call after hanging up"
        # a slot frees up while the page waits: its retry gets the call
        await page.click("#call")
        await page.wait_for_function("window.duplex.state === 'waiting'")
        front.engine.capacity = 1
        await page.wait_for_function("window.duplex.state === 'in-call'", timeout=20_000)
    async with front_end(auth_token="s3cret") as (_, url), chromium() as browser:
        page = await open_page(browser, url)
        assert await page.is_visible("#token")
        text = await message_after_call(page)
        assert text.startswith("Not authorized: this server needs an access token"), text
        await page.fill("#token", "s3cret")
        await page.click("#call")
        await page.wait_for_function("window.duplex.state === 'in-call'", timeout=20_000)


async def test_typed_text_an_ended_call_and_a_dropped_call_are_shown():
    async with front_end(capacity=2) as (front, url), chromium() as browser:
        page = await open_page(browser, url)
        await page.click("#call")
        await page.wait_for_function("window.duplex.state === 'in-call'", timeout=20_000)
        await page.fill("#text", "hello avatar")
        await page.click("#send")
        await page.wait_for_function("document.getElementById('captions').textContent.includes('heard: hello avatar')",
                                     timeout=5_000)
        assert front.engine.started[0].texts == ["hello avatar"]
        # the server ends the call (here: a worker fault): the page shows the reason
        front.engine.fail_session(front.engine.started[0].name, "worker fault: performer (pid 7) is hung")
        await page.wait_for_function(f"{MESSAGE}.includes('Call ended')", timeout=5_000)
        assert "performer (pid 7) is hung" in await page.evaluate(MESSAGE)
        # the connection goes without a word from the server: the page says the call dropped
        await page.click("#call")
        await page.wait_for_function("window.duplex.state === 'in-call'", timeout=20_000)
        await next(iter(front.calls.values())).pc.close()
        await page.wait_for_function(f"{MESSAGE}.includes('The call dropped')", timeout=10_000)
        assert "Call again when the connection is back" in await page.evaluate(MESSAGE)
