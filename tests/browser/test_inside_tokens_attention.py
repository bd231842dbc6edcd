"""The lessons on tokens, embeddings, attention heads and RoPE in a real browser against
a real server: each page starts its run through /scope/api/inside/..., and what it
prints (readout, detail lines, chips, cells) must equal what the API answered,
formatted here in Python independently of the pages' JavaScript."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tests.browser.scope_fold import js_fixed, screenshot
from tests.browser.scope_fold import js_number as js_num

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect


# -- formatting as the pages do it ------------------------------------------------------------


def q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def commas(n: int) -> str:
    return f"{n:,}"


VISIBLE = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"}


def show_ws(text: str) -> str:
    if text == "":
        return "∅"
    out = []
    for ch in text:
        if ch in VISIBLE:
            out.append(VISIBLE[ch])
        elif ord(ch) < 0x20:
            out.append(chr(0x2400 + ord(ch)))
        elif ord(ch) == 0x7F:
            out.append("␡")
        else:
            out.append(ch)
    return "".join(out)


def mix(a: tuple[int, ...], b: tuple[int, ...], t: float) -> str:
    c = max(0.0, min(1.0, t))
    r, g, bl = (math.floor(x + (y - x) * c + 0.5) for x, y in zip(a, b, strict=True))
    return f"rgb({r}, {g}, {bl})"


WHITE, BLUE, ORANGE = (255, 255, 255), (0, 114, 178), (213, 94, 0)


def inside(name: str):
    def matches(response: Any) -> bool:
        return (response.url.endswith(f"/scope/api/inside/{name}")
                and response.request.method == "POST")
    return matches


def goto(page, path: str, name: str) -> dict:
    with page.expect_response(inside(name)) as info:
        page.goto(path)
    assert info.value.ok, info.value.text()
    return info.value.json()


def rerun(page, name: str, action) -> dict:
    with page.expect_response(inside(name)) as info:
        action()
    assert info.value.ok, info.value.text()
    return info.value.json()


def check_readout(page, lines: list[str]) -> None:
    readout = page.locator("#readout")
    expect(readout).to_have_text("\n".join(lines))
    assert readout.inner_text() == "\n".join(lines)


# -- tokens ---------------------------------------------------------------------------------


def chip_label(tok: dict, i: int) -> str:
    n = len(tok["bytes"])
    kind = ", special token" if tok["special"] else ""
    hexes = " ".join(f"{b:02x}" for b in tok["bytes"])
    return (f"token {i}: {q(tok['text'])}, id {tok['id']}{kind}, "
            f"{n} byte{'' if n == 1 else 's'}: {hexes}")


def tokens_readout(d: dict, system: bool = False) -> list[str]:
    kv = d["kv"]
    mode = ((f"chat message{' with a system message' if system else ''}, "
             "the model's chat template applied") if d["chat"] else "plain text")
    special = ", ".join(q(t["text"]) for t in d["tokens"] if t["special"]) or "none"
    n = d["num_tokens"]
    return [
        f"mode: {mode}",
        f"tokens: {n} ({d['num_special']} special)",
        f"characters: {d['num_chars']}, bytes: {d['num_bytes']}",
        "pieces: " + " | ".join(f"{q(t['text'])} {t['id']}" for t in d["tokens"]),
        f"special: {special}",
        f"KV cache: {n} token{'' if n == 1 else 's'} × {commas(kv['kv_bytes_per_token'])} bytes"
        f" = {commas(kv['kv_bytes'])} bytes",
        f"per token: 2 × {kv['num_layers']} layers × {kv['num_kv_heads']} KV heads × "
        f"{kv['head_dim']} head dim × {kv['dtype_bytes']} bytes ({kv['dtype']}) = "
        f"{commas(kv['kv_bytes_per_token'])} bytes per token",
    ]


def test_tokens_pieces_counts_and_kv_bytes(page):
    d = goto(page, "/lessons/tokens.html", "tokens")
    assert not d["chat"] and d["num_tokens"] == len(d["tokens"])
    kv = d["kv"]
    assert kv["kv_bytes"] == d["num_tokens"] * kv["kv_bytes_per_token"]
    assert kv["kv_bytes_per_token"] == (2 * kv["num_layers"] * kv["num_kv_heads"] * kv["head_dim"]
                                        * kv["dtype_bytes"])
    check_readout(page, tokens_readout(d))
    chips = page.locator("#chips li.chip")
    expect(chips).to_have_count(d["num_tokens"])
    assert chips.locator(".t").all_inner_texts() == [show_ws(t["text"]) for t in d["tokens"]]
    assert chips.locator(".id").all_inner_texts() == [str(t["id"]) for t in d["tokens"]]
    expect(page.locator("#n-tokens")).to_have_text(commas(d["num_tokens"]))
    expect(page.locator("#n-bytes")).to_have_text(commas(d["num_bytes"]))
    # hover shows a chip's bytes; the keyboard moves along the chips
    detail = page.locator("#chip-detail")
    chips.nth(2).hover()
    expect(detail).to_have_text(chip_label(d["tokens"][2], 2))
    chips.nth(0).focus()
    expect(detail).to_have_text(chip_label(d["tokens"][0], 0))
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(detail).to_have_text(chip_label(d["tokens"][3], 3))
    assert page.evaluate("document.activeElement.dataset.index") == "3"
    page.keyboard.press("End")
    last = d["num_tokens"] - 1
    expect(detail).to_have_text(chip_label(d["tokens"][last], last))
    expect(chips.nth(last)).to_have_attribute("aria-label", chip_label(d["tokens"][last], last))

    # typing re-tokenizes once the typing stops (debounced): one request for a burst
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.post_data or "")
            if r.url.endswith("/scope/api/inside/tokens") else None)
    box = page.locator("#text")
    box.fill("")
    box.focus()
    typed = "naïve  café\nok"
    d2 = rerun(page, "tokens", lambda: box.press_sequentially(typed, delay=15))
    assert len(sent) == 1 and json.loads(sent[0]) == {"text": typed, "chat": False}
    check_readout(page, tokens_readout(d2))
    expect(chips).to_have_count(d2["num_tokens"])
    assert chips.locator(".t").all_inner_texts() == [show_ws(t["text"]) for t in d2["tokens"]]
    screenshot(page, "tokens")


def test_tokens_chat_message_shows_template_and_special_tokens(page):
    goto(page, "/lessons/tokens.html", "tokens")
    page.locator("#text").fill("What is a KV cache?")
    d = rerun(page, "tokens", lambda: page.get_by_label("Chat message (templated)").check())
    assert d["chat"] and d["num_special"] > 0 and d["template"]
    check_readout(page, tokens_readout(d, system=True))
    assert page.locator("#rendered").inner_text() == d["rendered"]
    expect(page.locator("#template")).to_have_text(d["template"])
    special = page.locator("#chips li.chip.special")
    expect(special).to_have_count(d["num_special"])
    first = next(i for i, t in enumerate(d["tokens"]) if t["special"])
    expect(special.first).to_have_attribute("aria-label", chip_label(d["tokens"][first], first))
    # without the system message (the template may put in a default one)
    d2 = rerun(page, "tokens", lambda: page.locator("#system").fill(""))
    check_readout(page, tokens_readout(d2, system=False))
    system = page.locator("#system").get_attribute("value")
    assert system in d["rendered"] and system not in d2["rendered"]
    assert page.locator("#rendered").inner_text() == d2["rendered"]
    screenshot(page, "tokens-chat")


# -- embeddings --------------------------------------------------------------------------------


def embeddings_readout(d: dict) -> list[str]:
    lines = [
        f"tokens: {len(d['rows'])}; hidden size {d['hidden_size']}, vocabulary {d['vocab_size']}",
        f"slice: dims {d['dim_start']}–{d['dim_start'] + d['dim_count'] - 1} of {d['hidden_size']} "
        f"({d['dim_count']} shown), largest |value| {js_num(d['slice_abs_max'])}",
    ]
    for r in d["rows"]:
        near = ", ".join(f"{q(n['text'])} {js_num(n['cosine'])}" for n in r["neighbours"])
        lines.append(f"{r['position']} {q(r['text'])} (id {r['id']}): norm {js_num(r['norm'])}; "
                     f"nearest: {near}")
    return lines


def emb_cell(d: dict, row: int, col: int) -> str:
    r = d["rows"][row]
    return (f"token {r['position']} {q(r['text'])} (id {r['id']}), dim {d['dim_start'] + col}: "
            f"{js_num(r['slice'][col])}")


def heat(value: float, abs_max: float) -> str:
    t = value / abs_max
    return mix(WHITE, BLUE, -t) if t < 0 else mix(WHITE, ORANGE, t)


def test_embeddings_strip_slider_and_keyboard(page):
    d = goto(page, "/lessons/embeddings.html", "embeddings")
    assert (d["dim_start"], d["dim_count"]) == (0, 32)
    check_readout(page, embeddings_readout(d))
    cells = page.locator("#strip .hm-cell")
    expect(cells).to_have_count(len(d["rows"]) * d["dim_count"])
    # the colour of a cell is its value on the diverging scale
    row, col = 1, 5
    cell = page.locator(f"#strip [data-r='{row}'][data-c='{col}']")
    assert cell.evaluate("e => getComputedStyle(e).backgroundColor") == heat(
        d["rows"][row]["slice"][col], d["slice_abs_max"])
    cell.hover()
    expect(page.locator("#cell-detail")).to_have_text(emb_cell(d, row, col))
    # the slider moves the slice
    d2 = rerun(page, "embeddings", lambda: page.locator("#dim-start").fill("100"))
    assert (d2["dim_start"], d2["dim_count"]) == (100, 32)
    check_readout(page, embeddings_readout(d2))
    expect(page.locator("#dim-start-out")).to_have_text("dims 100–131")
    # 8 dims: the slice narrows, the rows' norms and neighbours stay
    d3 = rerun(page, "embeddings", lambda: page.locator("#dim-count").select_option("8"))
    assert (d3["dim_start"], d3["dim_count"]) == (100, 8)
    assert [r["norm"] for r in d3["rows"]] == [r["norm"] for r in d["rows"]]
    check_readout(page, embeddings_readout(d3))
    expect(cells).to_have_count(len(d3["rows"]) * 8)
    # keyboard: into the strip, then arrows
    page.locator("#strip [data-r='0'][data-c='0']").focus()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#cell-detail")).to_have_text(emb_cell(d3, 1, 2))
    page.keyboard.press("End")
    expect(page.locator("#cell-detail")).to_have_text(emb_cell(d3, 1, 7))
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == emb_cell(d3, 1, 7)
    # the slider from the keyboard
    d4 = rerun(page, "embeddings", lambda: (page.locator("#dim-start").focus(),
                                            page.keyboard.press("ArrowRight")))
    assert d4["dim_start"] == 101
    check_readout(page, embeddings_readout(d4))
    screenshot(page, "embeddings")


# -- attention heads -----------------------------------------------------------------------------


def attention_readout(d: dict) -> list[str]:
    kv = d["kv"]
    group = ("no other query head shares it" if len(d["group"]) == 1
             else "shared by query heads " + ", ".join(map(str, d["group"])))
    lines = [
        f"prompt: {len(d['tokens'])} tokens; layer {d['layer']} of {d['num_layers']}, "
        f"query head {d['head']} of {d['num_heads']}, head dim {d['head_dim']}",
        f"query head {d['head']} reads KV head {d['kv_head']} of {d['num_kv_heads']}: {group}",
        f"KV cache per token: {commas(kv['kv_bytes_per_token'])} bytes with GQA "
        f"({d['num_kv_heads']} KV heads), {commas(kv['kv_bytes_per_token_without_gqa'])} bytes "
        f"without ({d['num_heads']}): {js_num(kv['ratio'])}× smaller",
        "strongest key per query:",
    ]
    t = d["tokens"]
    for i, m in enumerate(d["row_max"]):
        lines.append(f"  {i} {q(t[i])} → {m['key']} {q(t[m['key']])}: {js_num(m['weight'])}")
    return lines


def att_cell(d: dict, qi: int, k: int) -> str:
    t = d["tokens"]
    return f"query {qi} {q(t[qi])} → key {k} {q(t[k])}: weight {js_num(d['probs'][qi][k])}"


def test_attention_heads_matrix_hover_keyboard_and_selectors(page, scope_server):
    info = page.request.get(scope_server.url + "/scope/api/info").json()["engine"]
    d = goto(page, "/lessons/attention-heads.html", "attention")
    n = len(d["tokens"])
    assert [len(row) for row in d["probs"]] == list(range(1, n + 1))
    kv = d["kv"]
    assert kv["kv_bytes_per_token_without_gqa"] == (kv["kv_bytes_per_token"] * d["num_heads"]
                                                    // d["num_kv_heads"])
    assert d["head"] in d["group"]
    check_readout(page, attention_readout(d))
    expect(page.locator("#matrix .hm-cell")).to_have_count(n * (n + 1) // 2)
    expect(page.locator("#layer")).to_have_attribute("max", str(info["num_layers"] - 1))
    expect(page.locator("#head")).to_have_attribute("max", str(info["num_heads"] - 1))
    # hover a cell
    detail = page.locator("#detail")
    page.locator(f"#matrix [data-q='{n - 1}'][data-k='3']").hover()
    expect(detail).to_have_text(att_cell(d, n - 1, 3))
    # the keyboard: down twice from (0, 0), right past the diagonal stops at it
    page.locator("#matrix [data-q='0'][data-k='0']").focus()
    for key in ["ArrowDown", "ArrowDown", "ArrowRight", "ArrowRight", "ArrowRight"]:
        page.keyboard.press(key)
    expect(detail).to_have_text(att_cell(d, 2, 2))
    page.keyboard.press("ArrowUp")  # row 1 has keys 0..1: clamped
    expect(detail).to_have_text(att_cell(d, 1, 1))
    page.keyboard.press("PageDown")
    page.keyboard.press("Home")
    expect(detail).to_have_text(att_cell(d, n - 1, 0))
    focused = page.evaluate("document.activeElement.getAttribute('aria-label')")
    assert focused == att_cell(d, n - 1, 0)
    # the group: the query heads sharing this KV head are marked
    shared = page.locator("#heads .head.shared")
    assert shared.all_inner_texts() == [f"Q{h}" for h in d["group"]]
    expect(page.locator("#heads .head[aria-current=true]")).to_have_text(f"Q{d['head']}")
    # another head (Tab commits the number: change), then another layer (Enter)
    head = (d["head"] + len(d["group"])) % d["num_heads"]  # a head of another KV head
    d2 = rerun(page, "attention", lambda: (page.locator("#head").fill(str(head)),
                                           page.locator("#head").press("Tab")))
    assert d2["head"] == head and d2["kv_head"] != d["kv_head"]
    check_readout(page, attention_readout(d2))
    layer = info["num_layers"] - 1
    d3 = rerun(page, "attention", lambda: (page.locator("#layer").fill(str(layer)),
                                           page.locator("#layer").press("Enter")))
    assert (d3["layer"], d3["head"]) == (layer, head)
    check_readout(page, attention_readout(d3))
    page.locator("#matrix [data-q='4'][data-k='1']").hover()
    expect(detail).to_have_text(att_cell(d3, 4, 1))
    screenshot(page, "attention-heads")


# -- RoPE -----------------------------------------------------------------------------------------


def rope_readout(d: dict) -> list[str]:
    waves = [p["wavelength"] for p in d["pairs"]]
    scores = d["scores"]
    lo = min(scores, key=lambda s: s["score"])  # the first of equal ones, as the page
    hi = max(scores, key=lambda s: s["score"])
    t = d["tokens"]
    return [
        f"RoPE: theta {js_num(d['rope_theta'])}, head dim {d['head_dim']}, {d['num_pairs']} "
        f"dimension pairs; wavelengths {js_num(min(waves))} to {js_num(max(waves))} tokens",
        f"layer {d['layer']}, query head {d['head']} (KV head {d['kv_head']}); query position "
        f"{d['query_position']} {q(t[d['query_position']])}, key position {d['key_position']} "
        f"{q(t[d['key_position']])}, distance {d['distance']}",
        f"score in the run (post-RoPE q·k × scale): {js_num(d['score_in_run'])}",
        f"score on the curve at distance {d['distance']}: {js_num(d['score_at_distance'])}",
        f"score without RoPE (pre-RoPE q·k × scale): {js_num(d['score_without_rope'])}",
        f"scores over distance 0–{scores[-1]['distance']}: min {js_num(lo['score'])} at distance "
        f"{lo['distance']}, max {js_num(hi['score'])} at distance {hi['distance']}",
    ]


def angle_cell(d: dict, p: int, i: int) -> str:
    pair, a = d["pairs"][i], d["angles"][p][i]
    return (f"position {d['angle_positions'][p]}, pair {pair['pair']} (dims {pair['dims'][0]}, "
            f"{pair['dims'][1]}): angle {js_num(a)} rad ({js_fixed(a * 180 / math.pi, 1)}°), "
            f"wavelength {js_num(pair['wavelength'])} tokens")


def point(d: dict, dist: int) -> str:
    s = next(s["score"] for s in d["scores"] if s["distance"] == dist)
    mark = " (the pair in the run)" if dist == d["distance"] else ""
    return f"distance {dist}: score {js_num(s)}{mark}"


def test_rope_angles_chart_and_positions(page):
    d = goto(page, "/lessons/rope.html", "rope")
    assert d["distance"] == d["query_position"] - d["key_position"]
    assert len(d["scores"]) == 257 and d["num_pairs"] == d["head_dim"] // 2
    check_readout(page, rope_readout(d))
    cells = len(d["angle_positions"]) * d["num_pairs"]
    expect(page.locator("#angles .hm-cell")).to_have_count(cells)
    # an angle cell by hover, then by the keyboard
    page.locator("#angles [data-p='3'][data-i='1']").hover()
    expect(page.locator("#angle-detail")).to_have_text(angle_cell(d, 3, 1))
    page.locator("#angles [data-p='0'][data-i='0']").focus()
    for key in ["ArrowDown", "ArrowDown", "ArrowRight", "End"]:
        page.keyboard.press(key)
    expect(page.locator("#angle-detail")).to_have_text(angle_cell(d, 2, d["num_pairs"] - 1))
    # the chart: the run's point, the inspect slider
    expect(page.locator("#chart svg .run-point")).to_have_count(1)
    expect(page.locator("#chart svg title")).to_have_text(
        f"q·k score against distance, 0 to {d['scores'][-1]['distance']}; the run's pair at "
        f"distance {d['distance']} scores {js_num(d['score_in_run'])}, without RoPE "
        f"{js_num(d['score_without_rope'])}")
    expect(page.locator("#point-detail")).to_have_text(point(d, d["distance"]))
    page.locator("#inspect").fill("40")
    expect(page.locator("#point-detail")).to_have_text(point(d, 40))
    page.locator("#inspect").focus()
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#point-detail")).to_have_text(point(d, 39))
    # another key position and a shorter curve
    d2 = rerun(page, "rope", lambda: (page.locator("#key-position").fill("3"),
                                      page.locator("#key-position").press("Tab")))
    assert d2["key_position"] == 3 and d2["distance"] == d["distance"] - 3
    check_readout(page, rope_readout(d2))
    d3 = rerun(page, "rope", lambda: (page.locator("#max-distance").fill("32"),
                                      page.locator("#max-distance").press("Enter")))
    assert len(d3["scores"]) == 33
    check_readout(page, rope_readout(d3))
    expect(page.locator("#inspect")).to_have_attribute("max", "32")
    # a key after the query: the server's message, and the last run stays on show; Enter
    # (a change, then a submit) sends one request
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url)
            if r.url.endswith("/scope/api/inside/rope") else None)
    with page.expect_response(inside("rope")) as info:
        page.locator("#key-position").fill("999")
        page.locator("#key-position").press("Enter")
    assert info.value.status == 400
    message = info.value.json()["error"]["message"]
    expect(page.locator("#error")).to_have_text(f"Measuring RoPE failed (HTTP 400): {message}")
    expect(page.locator("#status")).to_have_text("The picture below still shows the previous run.")
    check_readout(page, rope_readout(d3))
    page.wait_for_timeout(200)  # time for a second request, were one coming
    assert len(sent) == 1
    screenshot(page, "rope")


# -- narrow screens --------------------------------------------------------------------------------

PAGES = {"tokens": "tokens", "embeddings": "embeddings", "attention-heads": "attention",
         "rope": "rope"}


@pytest.mark.parametrize("lesson", list(PAGES))
def test_narrow_screen_keeps_the_page_in_view(open_page, lesson):
    page = open_page(width=375)
    page.emulate_media(reduced_motion="reduce")
    goto(page, f"/lessons/{lesson}.html", PAGES[lesson])
    expect(page.locator("#readout")).not_to_have_text("No result yet.")
    assert page.locator("#readout").inner_text().strip()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    # a wide matrix scrolls inside its own box, not the page
    for wrap in page.locator(".table-wrap").all():
        assert wrap.evaluate("e => e.getBoundingClientRect().right") <= 375
    screenshot(page, f"{lesson}-375px")
