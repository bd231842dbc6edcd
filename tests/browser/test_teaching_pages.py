"""The teaching layer in a real browser against a real server: the glossary marks on
every page of the site (each term's first use in the prose, checked against a matcher
written here in Python over the page's own text), the concept cards, and the recap's
figures measured live (recomputed here from the lab API's responses)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.browser.scope_fold import is_lab_run, js_fixed, js_pct

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

STATIC = Path(__file__).resolve().parents[2] / "kvscope" / "scope" / "static"
TIP = "#glossary-tip"


def chrome_pages(name: str) -> list[str]:
    """The pages of one list in chrome.js (LESSONS or GUIDES), in order."""
    source = (STATIC / "js" / "chrome.js").read_text()
    body = re.search(rf"export const {name} = \[(.*?)\n\];", source, re.S).group(1)
    return re.findall(r"page: '([a-z0-9-]+)'", body)


LESSONS = chrome_pages("LESSONS")
GUIDES = chrome_pages("GUIDES")
ALL_PAGES = ["/", "/monitor.html"] + [f"/lessons/{p}.html" for p in LESSONS + GUIDES]

# The page's prose as runs of text, one per original text node (a glossary mark is part
# of the run it was cut from), with the marks in each: the rule for prose is written out
# again here rather than imported from the page's module.
PROSE_RUNS = """() => {
  const main = document.querySelector('main');
  const PROSE = new Set(['P', 'LI', 'DD', 'FIGCAPTION']);
  const SKIP = new Set(['H1', 'H2', 'H3', 'H4', 'H5', 'H6', 'BUTTON', 'LABEL', 'INPUT', 'SELECT',
    'OPTION', 'TEXTAREA', 'OUTPUT', 'CODE', 'PRE', 'KBD', 'SAMP', 'VAR', 'SVG', 'TABLE', 'A',
    'SUMMARY', 'SCRIPT', 'STYLE', 'NOSCRIPT', 'NAV', 'HEADER', 'FOOTER', 'TEMPLATE']);
  const CLASSES = ['legend', 'readout', 'tag', 'gloss', 'no-gloss'];
  const skips = (el) => SKIP.has(el.tagName.toUpperCase())
    || (el.id && !el.hasAttribute('data-glossary')) || el.hasAttribute('role')
    || el.hasAttribute('aria-live') || el.hasAttribute('hidden')
    || el.getAttribute('aria-hidden') === 'true' || CLASSES.some((c) => el.classList.contains(c));
  const eligible = (container) => {
    let prose = false;
    for (let el = container; el; el = el.parentElement) {
      if (el === main) return prose;
      if (skips(el)) return false;
      if (PROSE.has(el.tagName.toUpperCase())) prose = true;
    }
    return false;
  };
  const runs = [];
  let run = null;
  let last = null;
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
  for (let t = walker.nextNode(); t; t = walker.nextNode()) {
    const mark = t.parentElement.matches('a.gloss') ? t.parentElement : null;
    const unit = mark ?? t;
    if (!eligible(unit.parentElement)) { last = null; continue; }
    if (!(run && last && unit.previousSibling === last)) {
      run = {text: '', marks: []};
      runs.push(run);
    }
    if (mark) run.marks.push([run.text.length, t.data.length, mark.dataset.term]);
    run.text += t.data;
    last = unit;
  }
  return runs;
}"""

WORD = r"[A-Za-z0-9_-]"


class Matcher:
    """The glossary's terms matched whole-word, longest form first; a form with two
    capitals keeps its case, any other matches in any case."""

    def __init__(self, terms: list[dict]) -> None:
        self.forms: dict[str, list[tuple[str, str, bool]]] = {}
        for term in terms:
            for form in term["forms"]:
                sensitive = sum(c.isupper() for c in form) >= 2
                self.forms.setdefault(form.lower(), []).append((term["id"], form, sensitive))
        self.keys = sorted(self.forms, key=lambda k: (-len(k), k))
        alternatives = "|".join(re.escape(k) for k in self.keys)
        self.regex = re.compile(rf"(?<!{WORD})(?:{alternatives})(?!{WORD})", re.IGNORECASE)

    def term_of(self, found: str) -> str | None:
        for tid, form, sensitive in self.forms.get(found.lower(), []):
            if not sensitive or form == found:
                return tid
        return None

    def uses(self, text: str) -> list[tuple[int, int, str]]:
        out = []
        pos = 0
        while (m := self.regex.search(text, pos)) is not None:
            found = m.group(0)
            tid = self.term_of(found)
            if tid is None:
                found = next((text[m.start():m.start() + len(k)] for k in self.keys
                              if len(k) < len(found)
                              and text[m.start():m.start() + len(k)].lower() == k
                              and not re.match(WORD, text[m.start() + len(k):][:1])
                              and self.term_of(text[m.start():m.start() + len(k)])), None)
                if found is None:
                    pos = m.start() + 1
                    continue
                tid = self.term_of(found)
            out.append((m.start(), len(found), tid))
            pos = m.start() + len(found)
        return out


def expected_marks(runs: list[dict], matcher: Matcher) -> set[tuple[int, int, int, str]]:
    seen: set[str] = set()
    want = set()
    for i, run in enumerate(runs):
        for start, length, tid in matcher.uses(run["text"]):
            if tid not in seen:
                seen.add(tid)
                want.add((i, start, length, tid))
    return want


@pytest.fixture(scope="module")
def terms(browser, scope_server) -> list[dict]:
    context = browser.new_context(base_url=scope_server.url)
    page = context.new_page()
    page.goto("/lessons/glossary.html")
    found = page.evaluate("async () => (await import('/js/glossary-terms.js')).TERMS")
    context.close()
    return found


def quiet_labs(page) -> None:
    """The walk reads static prose only: the lessons' engine runs are answered with an
    error at once (each page shows it in its alert) instead of queueing on the server."""
    def refuse(route):
        route.fulfill(status=503, json={"error": {"message": "not run in the glossary walk"}})
    page.route(re.compile(r".*/scope/api/(lab|inside)/.*"), refuse)


def test_every_page_marks_the_first_use_of_each_term(page, terms, scope_server):
    matcher = Matcher(terms)
    defs = {t["id"]: t for t in terms}
    quiet_labs(page)
    used_outside_glossary: set[str] = set()
    for path in ALL_PAGES:
        page.goto(path)
        expect(page.locator("nav.site-nav")).to_be_visible()
        if path.endswith("/glossary.html"):
            expect(page.locator("#terms dt")).to_have_count(len(terms))
        if path.endswith(("/concept-cards.html", "/recap.html")):
            expect(page.locator("main li h2").first).to_be_visible()
        runs = page.evaluate(PROSE_RUNS)
        marks = {(i, start, length, tid) for i, run in enumerate(runs)
                 for start, length, tid in run["marks"]}
        want = expected_marks(runs, matcher)
        assert marks == want, (f"{path}: marked but not a first use: {sorted(marks - want)}; "
                               f"first uses not marked: {sorted(want - marks)}")
        assert len({m[3] for m in marks}) == len(marks), f"{path}: a term marked twice"
        if not path.endswith("/glossary.html"):
            used_outside_glossary |= {m[3] for m in marks}
        if not marks:
            continue
        # every mark is a focusable link to its glossary entry, described by the one tooltip
        links = page.locator("main a.gloss")
        assert links.count() == len(marks)
        first = links.first
        tid = first.get_attribute("data-term")
        expect(first).to_have_attribute("tabindex", "0")
        expect(first).to_have_attribute("aria-describedby", "glossary-tip")
        href = first.get_attribute("href")
        assert href.endswith(f"lessons/glossary.html#g-{tid}"), href
        tip = page.locator(TIP)
        assert page.locator("[role=tooltip]").count() <= 1
        expect(tip).to_be_hidden()
        # hover shows the definition; Escape hides it
        first.hover()
        expect(tip).to_be_visible()
        expect(tip).to_have_text(f"{defs[tid]['term']}: {defs[tid]['def']}")
        page.keyboard.press("Escape")
        expect(tip).to_be_hidden()
        # so does keyboard focus, on another term too
        other = links.nth(links.count() - 1)
        oid = other.get_attribute("data-term")
        page.mouse.move(0, 0)
        other.focus()
        expect(tip).to_be_visible()
        expect(tip).to_have_text(f"{defs[oid]['term']}: {defs[oid]['def']}")
        assert page.locator("[role=tooltip]").count() == 1
        assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]
        page.keyboard.press("Escape")
        expect(tip).to_be_hidden()
        expect(other).to_be_focused()
    # every term of the glossary is used on some page other than the glossary itself
    missing = {t["id"] for t in terms} - used_outside_glossary
    assert not missing, f"glossary terms no page uses: {sorted(missing)}"
    # the glossary's anchors exist: one per term
    page.goto("/lessons/glossary.html")
    anchors = page.locator("#terms dt").evaluate_all("els => els.map(e => e.id)")
    assert sorted(anchors) == sorted(f"g-{t['id']}" for t in terms)


def test_a_term_link_lands_on_its_entry(page):
    page.route(re.compile(r".*/scope/api/(lab|inside)/.*"),
               lambda route: route.fulfill(status=503, json={"error": {"message": "no"}}))
    page.goto("/lessons/paged-attention.html")
    link = page.locator("main a.gloss[data-term=block-table]")
    link.focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**/lessons/glossary.html#g-block-table")
    expect(page.locator("#g-block-table")).to_have_text("block table")
    expect(page.locator("#g-block-table")).to_be_in_viewport()


def test_concept_cards_reveal_their_analogy(page, scope_server):
    page.goto("/lessons/concept-cards.html")
    cards = page.evaluate("async () => (await import('/js/logic/concept-cards.js')).CARDS")
    items = page.locator("#cards > li")
    expect(items).to_have_count(len(cards))
    for i, card in enumerate(cards):
        expect(items.nth(i).locator("h2")).to_have_text(card["title"])
    kv = page.locator("#cards > li[data-card=kv-cache]")
    expect(kv.get_by_role("button", name="Show the analogy")).to_have_count(1)
    button = kv.locator("button[aria-expanded]")
    analogy = kv.locator(".analogy")
    expect(button).to_have_attribute("aria-expanded", "false")
    expect(analogy).to_be_hidden()
    card = next(c for c in cards if c["id"] == "kv-cache")
    button.click()
    expect(button).to_have_attribute("aria-expanded", "true")
    expect(analogy).to_be_visible()
    expect(analogy).to_have_text(card["analogy"])
    expect(button).to_have_text("Hide the analogy")
    assert button.get_attribute("aria-controls") == analogy.get_attribute("id")
    # the keyboard: Enter and Space on another card's button
    other = page.locator("#cards > li[data-card=beam-search] button")
    other.focus()
    page.keyboard.press("Enter")
    expect(other).to_have_attribute("aria-expanded", "true")
    page.keyboard.press("Space")
    expect(other).to_have_attribute("aria-expanded", "false")
    expect(page.locator("#cards > li[data-card=beam-search] .analogy")).to_be_hidden()
    expect(button).to_have_attribute("aria-expanded", "true")  # the first stays open
    # every card links to a lesson that exists
    hrefs = page.locator("#cards a.lesson-link").evaluate_all("els => els.map(a => a.href)")
    assert len(hrefs) == len(cards)
    for href in hrefs:
        assert httpx.get(href).status_code == 200, href
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280


def prefix_text(events: list[dict]) -> str:
    arrived = next(e for e in events if e["kind"] == "request_arrived" and e["request_id"] == "1")
    lookup = next(e for e in events
                  if e["kind"] == "prefix_cache_lookup" and e["request_id"] == "1")
    total = len(arrived["prompt_token_ids"])
    hit = lookup["hit_tokens"]
    assert hit > 0, "the shared prefix should come from the cache"
    return (f"the second request computed {total - hit} of its {total} prompt tokens; "
            f"{hit} came from the cache (without it: all {total})")


def speculative_text(events: list[dict]) -> str:
    passes = [e for e in events if e["kind"] == "drafts_verified" and e["request_id"] == "0"]
    assert passes, "the n-gram proposer should draft on a copying prompt"
    drafted = sum(len(e["draft_token_ids"]) for e in passes)
    accepted = sum(e["num_accepted"] for e in passes)
    tokens = sum(len(e["token_ids"]) for e in passes)
    n = len(passes)
    return (f"{js_fixed(accepted / n, 2)} accepted drafts per verifying pass ({accepted} of "
            f"{drafted}, {js_pct(accepted / drafted)}; {js_fixed(tokens / n, 2)} tokens per pass)")


def test_recap_measures_rows_on_the_server(page, scope_server):
    runs = []
    page.on("response", lambda r: runs.append(r) if is_lab_run(r) else None)
    page.goto("/lessons/recap.html")
    expect(page.locator("#rows > li")).not_to_have_count(0)
    # nothing runs until asked, and no row shows a figure before it is measured
    figures = page.locator("#rows .figure[data-state=none]")
    assert figures.count() >= 6
    expect(figures.first).to_have_text("Not measured yet.")
    assert runs == []

    row = page.locator("#rows > li[data-row=prefix-caching]")
    with page.expect_response(is_lab_run) as info:
        row.get_by_role("button", name="Measure: Prefix caching").click()
    response = info.value
    assert response.ok, response.text()
    body = response.request.post_data_json
    assert body["enable_prefix_caching"] is True and body["arrive_at_step"] == [0, 2]
    expect(row.locator(".figure")).to_have_attribute("data-state", "measured")
    expect(row.locator(".figure")).to_have_text(prefix_text(response.json()["events"]))

    row = page.locator("#rows > li[data-row=speculative-decoding]")
    with page.expect_response(is_lab_run) as info:
        row.get_by_role("button", name="Measure: Speculative decoding").click()
    response = info.value
    assert response.ok, response.text()
    assert response.request.post_data_json["speculative_config"]["method"] == "ngram"
    expect(row.locator(".figure")).to_have_attribute("data-state", "measured")
    expect(row.locator(".figure")).to_have_text(speculative_text(response.json()["events"]))
    assert len(runs) == 2

    # a failing run is told in the alert and the row says it was not measured
    page.route("**/scope/api/lab/run", lambda route: route.fulfill(
        status=400, json={"error": {"message": "pool too small"}}))
    row = page.locator("#rows > li[data-row=preemption]")
    row.get_by_role("button", name="Measure: Preemption").click()
    expect(page.get_by_role("alert")).to_have_text(
        "The Preemption run failed (HTTP 400): pool too small")
    expect(row.locator(".figure")).to_have_attribute("data-state", "failed")
    # rows that need worker processes link to their lessons, with no button
    tp = page.locator("#rows > li[data-row=tensor-parallelism]")
    expect(tp.get_by_role("button")).to_have_count(0)
    expect(tp.locator("a[href='tensor-parallelism.html']")).to_have_count(1)
    expect(page.locator("#reading")).to_contain_text(
        "Efficient Memory Management for Large Language Model Serving with PagedAttention")
