"""The playground in a real browser: headless Debian Chromium driven by Playwright.

Opens the page; sends a chat message by keyboard and sees the reply grow token by token;
stops a generation (the server's slot is freed); changes the temperature (the next
request carries it); opens the model view and sees a drawn attention map; fits a phone's
width; asks for the API key when the server has one; shows a message in the page when
the server is down; and no request ever leaves for another host. Screenshots go to
$LUMENLM_TEST_ARTIFACTS (default: the test's tmp dir).

Needs `pip install playwright` and Debian's `chromium` (no browser download:
`executable_path`); skipped with a message otherwise. Slow.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from infer_helpers import make_model_dir, serve_app, tok_path  # noqa: F401 (fixtures)
from lumenlm.infer.server import create_app
from lumenlm.modelio import load

pytestmark = pytest.mark.slow

CARD = "# tiny-ui\n\nA random model for the browser test.\n\n- one\n- two\n"


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium: apt-get install chromium (.ci/run does when it can)")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, tok_path: Path):  # noqa: F811
    d = make_model_dir(tmp_path_factory.mktemp("ui"), "tiny-gpt2", tok_path)
    (d / "README.md").write_text(CARD)
    return load(d)


@pytest.fixture()
def artifacts(tmp_path: Path) -> Path:
    out = Path(os.environ.get("LUMENLM_TEST_ARTIFACTS", tmp_path)) / "ui-screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture()
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    exe = chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def watch_requests(page, base: str) -> list[str]:
    """Every URL the page requests (to check that none goes to another host)."""
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    return urls


def only_local(urls: list[str], base: str) -> None:
    host = urlsplit(base).netloc
    foreign = [
        u
        for u in urls
        if urlsplit(u).scheme in ("http", "https", "ws", "wss") and urlsplit(u).netloc != host
    ]
    assert not foreign, foreign
    assert urls, "the page made no request at all"


def wait_js(page, expr: str, timeout: float = 60) -> None:
    """Poll `expr` in the page until it is true (Playwright's wait_for_function evaluates
    a string with eval, which the page's Content-Security-Policy forbids, as it should)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({expr})"):
        assert time.monotonic() < deadline, f"never true in the page: {expr}"
        time.sleep(0.05)


def reply_lengths(page, seconds: float) -> list[int]:
    """The last reply's text length, sampled every 20 ms for `seconds` (or until done)."""
    return page.evaluate(
        """async (ms) => {
          const seen = [];
          const t0 = performance.now();
          while (performance.now() - t0 < ms) {
            const items = document.querySelectorAll('#messages li.assistant .content');
            const last = items[items.length - 1];
            seen.push(last ? last.textContent.length : 0);
            if (!document.getElementById('send').disabled && seen[seen.length - 1] > 0) break;
            await new Promise((r) => setTimeout(r, 20));
          }
          return seen;
        }""",
        seconds * 1000,
    )


def test_playground_in_chromium(browser, model, artifacts: Path) -> None:
    app = create_app(model, model.tokenizer, model_name="tiny-ui", slots=4, max_tokens_cap=4096)
    for base in serve_app(app):
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        urls = watch_requests(page, base)
        bodies: list[dict] = []
        page.on(
            "request",
            lambda r, bodies=bodies: (
                bodies.append(json.loads(r.post_data))
                if r.url.endswith("/v1/chat/completions")
                else None
            ),
        )
        page.goto(base + "/")
        wait_js(page, "document.getElementById('model-id').textContent === 'tiny-ui'")
        assert page.get_by_label("Temperature").first.is_visible()  # controls have labels
        assert page.locator("#key-form").is_hidden()  # no key on this server

        # chat by keyboard; the reply streams in (its length grows over many samples)
        page.get_by_label("Max tokens").first.fill("400")
        page.get_by_label("Message", exact=True).focus()
        page.keyboard.type("Tell me a story about the cat")
        page.keyboard.press("Enter")
        lengths = reply_lengths(page, 60)
        wait_js(page, "!document.getElementById('send').disabled", 120)
        growth = sorted(set(x for x in lengths if x > 0))
        assert len(growth) >= 3, f"the reply did not stream: lengths seen {lengths[:50]}"
        page.screenshot(path=str(artifacts / "1-chat-streamed.png"))

        # stop a long generation: the text stops growing, the slot is freed
        page.get_by_label("Max tokens").first.fill("4000")
        page.get_by_label("Message", exact=True).fill("Tell me a very long story")
        page.get_by_role("button", name="Send").click()
        wait_js(
            page,
            "(() => { const i = document.querySelectorAll('#messages li.assistant .content');"
            " return i.length >= 2 && i[i.length - 1].textContent.length > 5; })()",
            60,
        )
        page.get_by_role("button", name="Stop").click()
        wait_js(page, "document.getElementById('stop').disabled")
        stopped = page.locator("#messages li.assistant .content").last.text_content()
        deadline = time.monotonic() + 30
        while httpx.get(base + "/health").json()["active"]:
            assert time.monotonic() < deadline, "the stopped generation still holds its slot"
            time.sleep(0.05)
        time.sleep(0.3)
        assert page.locator("#messages li.assistant .content").last.text_content() == stopped
        page.screenshot(path=str(artifacts / "2-chat-stopped.png"))

        # temperature: the next request carries the new value; regenerate re-asks
        page.get_by_label("Temperature").first.fill("0")
        page.get_by_label("Max tokens").first.fill("8")
        page.get_by_role("button", name="Regenerate").click()
        wait_js(page, "!document.getElementById('send').disabled", 60)
        assert bodies[-1]["temperature"] == 0 and bodies[-1]["max_tokens"] == 8
        assert bodies[0]["temperature"] == 0.8

        # the conversation survives a reload (localStorage); new chat starts empty
        page.reload()
        wait_js(page, "document.querySelectorAll('#messages li.user').length === 2")
        page.get_by_role("button", name="New chat").click()
        assert page.locator("#messages li").count() == 0

        # completion view: several samples side by side
        page.get_by_role("tab", name="Completion").click()
        page.get_by_label("Samples").fill("3")
        page.get_by_label("Seed").fill("1")
        page.get_by_role("button", name="Generate").click()
        wait_js(page, "document.querySelectorAll('#samples article').length === 3")
        page.screenshot(path=str(artifacts / "3-completion.png"))

        # model view: card, exact parameter count, attention map drawn
        page.get_by_role("tab", name="Model").click()
        n_params = sum({id(p): p.numel() for p in model.parameters()}.values())
        assert str(n_params) in page.locator("#param-count").text_content()
        assert page.locator("#card h3").first.text_content() == "tiny-ui"
        page.get_by_role("button", name="Inspect").click()
        wait_js(page, "document.getElementById('attention').dataset.drawn === '1'")
        painted = page.evaluate(
            "(() => { const c = document.getElementById('attention');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " const s = new Set(); for (let i = 0; i < d.length; i += 4) s.add(d[i]); return s.size; })()"
        )
        assert painted > 2  # shades, not a blank canvas
        assert page.locator("#loss span").count() > 3 and page.locator("#lens tr").count() > 2
        page.screenshot(path=str(artifacts / "4-model-view.png"), full_page=True)

        # phone width: nothing wider than the screen
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        urls += watch_requests(phone, base)
        phone.goto(base + "/")
        wait_js(phone, "document.getElementById('model-id').textContent === 'tiny-ui'")
        assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        phone.screenshot(path=str(artifacts / "5-phone.png"), full_page=True)
        phone.close()
        only_local(urls, base)

    # the server is gone: the page says so instead of failing silently
    page.get_by_role("tab", name="Chat").click()
    page.get_by_label("Message", exact=True).fill("are you there?")
    page.get_by_role("button", name="Send").click()
    page.wait_for_selector("#status:not([hidden])")
    assert "Cannot reach the server" in page.locator("#status").text_content()
    page.screenshot(path=str(artifacts / "6-server-down.png"))


def test_playground_asks_for_the_api_key(browser, model, artifacts: Path) -> None:
    app = create_app(model, model.tokenizer, model_name="keyed", api_key="s3cret", slots=2)
    for base in serve_app(app):
        page = browser.new_page()
        urls = watch_requests(page, base)
        page.goto(base + "/")
        page.wait_for_selector("#key-form:not([hidden])")
        page.screenshot(path=str(artifacts / "7-api-key.png"))
        page.get_by_label("This server needs an API key").fill("s3cret")
        page.keyboard.press("Enter")
        wait_js(page, "document.getElementById('model-id').textContent === 'keyed'")
        assert page.locator("#status").is_hidden()
        only_local(urls, base)
