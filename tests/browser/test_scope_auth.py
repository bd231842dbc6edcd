"""The scope against a server started with an API key: each page asks for the key with
one small form, keeps it in the tab's sessionStorage (never the URL), sends it on every
call, the live stream included (read with fetch, since EventSource sends no headers);
and against a server without a key nothing asks for one."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.browser.conftest import Page
from tests.browser.scope_fold import screenshot
from tests.server_harness import MODEL_NAME, running_server

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

KEY = "scope-key-7d41c2"
AUTH = {"Authorization": f"Bearer {KEY}"}
STORAGE = "kvscope.apiKey"
WRONG_KEY_MESSAGE = "The server did not accept that key (HTTP 401). Check it and try again."


@pytest.fixture(scope="module")
def keyed_server(loaded_fp32):
    with running_server(loaded_fp32, api_key=KEY) as server:
        yield server


class KeyedPage(Page):
    """A page on the keyed server that also keeps the console, to check the key is never
    logged."""

    def __init__(self, browser, base: str) -> None:
        super().__init__(browser, base)
        self.console: list[str] = []
        self.page.on("console", lambda message: self.console.append(message.text))


@pytest.fixture
def open_keyed(browser, keyed_server) -> Iterator:
    pages: list[KeyedPage] = []

    def make() -> KeyedPage:
        pages.append(KeyedPage(browser, keyed_server.url))
        return pages[-1]

    yield make
    errors = [e for p in pages for e in p.errors]
    logged = [m for p in pages for m in p.console if KEY in m]
    for p in pages:
        p.close()
    assert not errors, f"uncaught JavaScript errors: {errors}"
    assert not logged, "the API key was written to the console"


def key_form(page):
    return page.get_by_role("region", name="API key needed")


def enter_key(page, key: str) -> None:
    form = key_form(page)
    form.get_by_label("API key").fill(key)
    form.get_by_role("button", name="Use this key").click()


def stored(page) -> str | None:
    return page.evaluate(f"sessionStorage.getItem({STORAGE!r})")


def wait_for(page, condition, what: str, timeout_s: float = 30) -> None:
    """Poll `condition`, letting Playwright deliver the page's events meanwhile."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        page.wait_for_timeout(50)


# -- a server with a key ------------------------------------------------------------------


def test_home_page_asks_for_the_key_once_per_tab(open_keyed, keyed_server):
    page = open_keyed().page
    page.goto("/")
    form = key_form(page)
    expect(form).to_be_visible()
    expect(form).to_contain_text(
        "This server requires its API key. The scope keeps it in this browser tab only "
        "and sends it with each request it makes.")
    field = form.get_by_label("API key")
    expect(field).to_have_attribute("type", "password")
    expect(field).to_be_focused()
    expect(page.locator("#server")).to_have_text("Asking the server what it runs…")
    expect(page.locator("#error")).to_be_hidden()
    # a wrong key: told so in the form, which stays; still no data
    enter_key(page, "not-the-key")
    expect(form.get_by_role("alert")).to_have_text(WRONG_KEY_MESSAGE)
    expect(form).to_be_visible()
    expect(page.locator("#server")).to_have_text("Asking the server what it runs…")
    assert stored(page) is None
    screenshot(page, "key-form")
    # the right key: the form goes, the page loads what it was waiting for
    enter_key(page, KEY)
    expect(form).to_have_count(0)
    info = httpx.get(keyed_server.url + "/scope/api/info", headers=AUTH).json()
    expect(page.locator("#server")).to_contain_text(
        f"Server model: {info['model']} (serving live). {info['engine']['num_layers']} layers")
    assert stored(page) == KEY
    assert page.evaluate("localStorage.length") == 0
    assert KEY not in page.url
    # another page of the same tab sends the stored key without asking
    page.locator("main a[href='monitor.html']").click()
    expect(page).to_have_url(re.compile(r"/monitor\.html$"))
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    expect(page.locator("#readout")).to_contain_text("step ")
    expect(key_form(page)).to_have_count(0)
    assert KEY not in page.url
    # forgetting the key: the page reloads and asks again
    page.get_by_role("button", name="Forget the API key").click()
    expect(key_form(page)).to_be_visible()
    assert stored(page) is None


def test_calls_failing_together_share_one_form(open_keyed, keyed_server):
    page = open_keyed().page
    refused: list[str] = []
    page.on("response", lambda r: refused.append(r.url) if r.status == 401 else None)
    # a stored key the server no longer accepts (it restarted with another one)
    page.goto("/")
    page.evaluate(f"sessionStorage.setItem({STORAGE!r}, 'an-old-key')")
    page.reload()
    form = key_form(page)
    expect(form.get_by_role("alert")).to_have_text(
        "The server no longer accepts the stored key; enter it again.")
    refused.clear()
    # three more calls while the form is open: all wait on the same form
    page.evaluate("""() => {
        window.calls = import('/js/api.js').then((api) => Promise.all([
          api.getJSON('/scope/api/kv-sizes'),
          api.postJSON('/tokenize', {prompt: 'one two three'}),
          api.getNdjson('/scope/api/replay').catch((err) => err.status)]));
    }""")
    wait_for(page, lambda: len(refused) == 3, "three refused calls")
    expect(page.locator(".key-form")).to_have_count(1)
    enter_key(page, KEY)
    expect(page.locator(".key-form")).to_have_count(0)
    sizes, tokens, replay = page.evaluate("window.calls")
    assert sizes == httpx.get(keyed_server.url + "/scope/api/kv-sizes", headers=AUTH).json()
    assert tokens["count"] == httpx.post(keyed_server.url + "/tokenize", headers=AUTH,
                                         json={"prompt": "one two three"}).json()["count"]
    assert replay == 404  # past the key: this server simply has no recording
    expect(page.locator("#server")).to_contain_text(f"Server model: {MODEL_NAME} (serving live).")


def test_monitor_with_a_key_follows_the_serving_engine(open_keyed, keyed_server):
    page = open_keyed().page
    streams: list = []
    page.on("request",
            lambda r: streams.append(r) if r.url.endswith("/scope/api/live") else None)
    page.goto("/monitor.html")
    expect(key_form(page)).to_be_visible()
    expect(page.locator("#conn")).to_have_text("Connecting…")
    expect(page.locator("#readout")).to_have_text("Waiting for the first event…")
    enter_key(page, KEY)
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    expect(page.locator("#conn")).to_have_text("Live: following the server's engine.")
    expect(page.locator("#readout")).to_contain_text("step ")  # the snapshot arrived
    assert [r.all_headers().get("authorization") for r in streams] == [f"Bearer {KEY}"]
    response = httpx.post(keyed_server.url + "/v1/completions", headers=AUTH, timeout=120, json={
        "model": MODEL_NAME, "prompt": "The scope needs the key", "max_tokens": 8,
        "temperature": 0, "ignore_eos": True})
    assert response.status_code == 200, response.text
    body = response.json()
    rid = f"{body['id']}-0"  # the server names the engine request of prompt i "<id>-<i>"
    expect(page.locator("#readout")).to_contain_text(
        f"{rid}: finished (length), prompt {body['usage']['prompt_tokens']} tokens, 8 generated")
    expect(key_form(page)).to_have_count(0)


# -- the stream reader, and a server without a key --------------------------------------------


def test_stream_reader_parses_events_drops_and_reconnects(page):
    """followEvents over a fake fetch: chunks cut mid-line, keep-alive comments, CRLF
    lines, 'event: dropped' (reconnect for a snapshot), the end of a stream (reconnect
    after a pause), then an HTTP error (closed); the stored key on every request."""
    page.goto("/")
    expect(page.locator("#server")).to_contain_text("Server model")
    result = page.evaluate("""async (storage) => {
        sessionStorage.setItem(storage, 'k-123');
        const bodies = [
          [': keep-alive\\n\\ndata: {"kind":"a",', '"n":1}\\n', '\\ndata: {"kind":"b"}\\r\\n\\r\\n',
           ': keep-alive\\n\\nevent: dropped\\ndata: {}\\n\\ndata: {"kind":"never"}\\n\\n'],
          ['data: {"kind":"c"}\\n\\nda', 'ta: not json\\n\\n'],
        ];
        const sent = [];
        window.fetch = async (url, options) => {
          sent.push(options.headers.Authorization);
          const chunks = bodies.shift();
          if (!chunks) return new Response('{"error": {"message": "gone"}}', {status: 404});
          const encoder = new TextEncoder();
          const stream = new ReadableStream({start(c) {
            for (const chunk of chunks) c.enqueue(encoder.encode(chunk));
            c.close();
          }});
          return new Response(stream, {headers: {'Content-Type': 'text/event-stream'}});
        };
        const {followEvents} = await import('/js/api.js');
        const events = [];
        const statuses = [];
        await new Promise((resolve) => {
          followEvents('/fake/live', (e) => events.push(e), (s) => {
            statuses.push(s);
            if (s === 'closed') resolve();
          });
        });
        return {events, statuses, sent};
    }""", STORAGE)
    assert result["events"] == [{"kind": "a", "n": 1}, {"kind": "b"}, {"kind": "c"}]
    assert result["statuses"] == ["connecting", "open", "dropped", "open", "reconnecting",
                                  "closed"]
    assert result["sent"] == ["Bearer k-123"] * 3


def test_without_a_key_nothing_asks_for_one(page):
    page.goto("/")
    expect(page.locator("#server")).to_contain_text(f"Server model: {MODEL_NAME} (serving live).")
    expect(page.locator(".key-form")).to_have_count(0)
    expect(page.locator("#forget-key")).to_have_count(0)
    page.goto("/monitor.html")
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    expect(page.locator("#readout")).to_contain_text("step ")
    expect(page.locator(".key-form")).to_have_count(0)
    assert page.evaluate("sessionStorage.length") == 0
