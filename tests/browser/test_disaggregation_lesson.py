"""The disaggregated prefill/decode lesson: the page sends one prompt to POST
/scope/api/lab/disaggregation, where a prefill engine (kv_producer) computes it and a
decode engine (kv_consumer) loads its K/V and generates the rest. What the page prints
(each lifecycle event on both servers, the blocks, the bytes and milliseconds of the
move, the counters) must equal what the response's events say, told here in Python
independently of the page; and the decode server must have computed none of the prompt."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.browser.scope_fold import js_fixed, screenshot

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

PAGE = "/lessons/disaggregation.html"
RUN_MS = 120_000  # three engines start per run, on 2 CPU cores shared with the server


def is_disagg_run(response: Any) -> bool:
    return (response.url.endswith("/scope/api/lab/disaggregation")
            and response.request.method == "POST")


def plural(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def binary(n: int) -> str:
    """format.js bytes(): a binary unit, 2, 1 or 0 decimals by size."""
    value, unit = float(n), 0
    while abs(value) >= 1024 and unit < 4:
        value, unit = value / 1024, unit + 1
    if unit == 0:
        return f"{n:,} B"
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{js_fixed(value, digits)} {['B', 'KiB', 'MiB', 'GiB', 'TiB'][unit]}"


def nbytes(n: int) -> str:
    return f"{n:,} bytes ({binary(n)})"


def ms(x: float, digits: int = 1) -> str:
    return f"{js_fixed(x, digits)} ms"


def blocks(ids: list[int]) -> str:
    return ("block " if len(ids) == 1 else "blocks ") + ", ".join(map(str, ids))


def token(e: dict[str, Any]) -> str:
    return f"{e['token_id']} {json.dumps(e['text'], ensure_ascii=False)}"


def story(data: dict[str, Any]) -> list[tuple[str, str, list[int]]]:
    """(side, what happened, that side's blocks for the request after it) for each event
    the lesson tells: the prefill engine's until its last step ended, then the decode
    engine's, then what the prefill engine recorded after the decode (the lab frees the
    producer's held blocks once the decode is done)."""
    pre = data["prefill"]["events"]
    last = max(i for i, e in enumerate(pre) if e["kind"] == "step_end")
    order = ([("prefill", e) for e in pre[:last + 1]]
             + [("decode", e) for e in data["decode"]["events"]]
             + [("prefill", e) for e in pre[last + 1:]])
    params = data["kv_transfer_params"]
    # each step's chunks, forward time and sampled tokens, by (side, step number)
    steps: dict[tuple[str, int], dict[str, Any]] = {}
    for side, e in order:
        if e["kind"] == "step_begin":
            steps[(side, e["step"])] = {"tokens": []}
        elif e["kind"] == "token_emitted" and (side, e["step"]) in steps \
                and "end" not in steps[(side, e["step"])]:
            steps[(side, e["step"])]["tokens"].append(e)
        elif e["kind"] == "step_end":
            steps[(side, e["step"])]["end"] = e
    tables: dict[str, list[int]] = {"prefill": [], "decode": []}
    outputs = {"prefill": 0, "decode": 0}
    in_step = {"prefill": False, "decode": False}
    told: set[tuple[str, int]] = set()
    last_move: dict[str, dict[str, Any]] = {}
    out: list[tuple[str, str, list[int]]] = []

    def step_line(side: str, number: int) -> str:
        s = steps[(side, number)]
        work = " + ".join(
            f"{c['phase']} {plural(c['num_tokens'], 'token')} at "
            + (f"position {c['start']}" if c["num_tokens"] == 1
               else f"positions {c['start']}–{c['start'] + c['num_tokens'] - 1}")
            for c in s["end"]["batch"])
        text = f"step {number}: {work}, forward {ms(s['end']['forward_ms'])}"
        if s["tokens"]:
            listed = ", ".join(token(t) for t in s["tokens"])
            if side == "prefill" and outputs[side] == 0:
                text += f", first token {listed} sampled"
            else:
                text += f", {'token' if len(s['tokens']) == 1 else 'tokens'} {listed} sampled"
        return text

    for side, e in order:
        kind, text = e["kind"], None
        table = tables[side]
        if kind == "request_arrived":
            size = (f"{plural(len(e['prompt_token_ids']), 'prompt token')}, "
                    f"max_tokens {e['max_tokens']}")
            text = (f"request {e['request_id']} arrived with kv_transfer_params (num_tokens "
                    f"{params['num_tokens']}, first_token_id {params['first_token_id']}): {size}"
                    if side == "decode" else f"request {e['request_id']} arrived: {size}")
        elif kind == "blocks_allocated":
            table += e["block_ids"]
            text = f"{blocks(e['block_ids'])} allocated"
            if e["evicted"]:
                text += f" ({blocks(e['evicted'])} evicted from the prefix cache)"
        elif kind == "blocks_shared":
            table += e["block_ids"]
            text = f"{blocks(e['block_ids'])} shared from the prefix cache"
        elif kind == "blocks_freed":
            tables[side] = table = [b for b in table if b not in e["block_ids"]]
            why = ""
            move = last_move.get(side)
            if side == "prefill" and move and move["direction"] == "save":
                why = " (its K/V is in shared storage)"
            elif side == "prefill" and move and move["direction"] == "release":
                why = (" (the hold timed out)" if move["reason"] == "timeout"
                       else " (after the decode server took the K/V)")
            text = f"{blocks(e['block_ids'])} freed{why}"
        elif kind == "request_scheduled":
            text = f"scheduled with {plural(e['num_computed_tokens'], 'token')} already computed"
        elif kind == "step_begin":
            in_step[side] = True
        elif kind == "token_emitted":
            key = (side, e["step"])
            if not in_step[side]:
                text = f"first token {token(e)} taken from the prefill server (not computed here)"
            elif key not in told:
                told.add(key)
                text = step_line(side, e["step"]) if steps[key]["end"]["batch"] else None
            outputs[side] += 1
        elif kind == "step_end":
            key = (side, e["step"])
            if key not in told and e["batch"]:
                text = step_line(side, e["step"])
            told.add(key)
            in_step[side] = False
        elif kind == "kv_transferred":
            moved = f"{plural(e['num_tokens'], 'token')}, {nbytes(e['num_bytes'])}"
            took = ms(1000 * e["seconds"], 2)
            if e["direction"] == "save":
                text = f"K/V saved to shared storage: {moved} in {took}"
            elif e["direction"] == "send":
                text = f"K/V sent to the decode server: {moved}, copied out in {took}"
            elif e["direction"] == "release":
                text = ("hold released: nobody took the K/V in time" if e["reason"] == "timeout"
                        else "hold released: the decode server took the K/V")
            elif e["ok"]:
                text = f"K/V loaded: {moved} in {took} into {blocks(table)}"
            else:
                text = f"K/V load failed ({e['reason']}): this server computes the prompt itself"
            last_move[side] = e
        elif kind == "request_finished":
            text = (f"request {e['request_id']} finished ({e['reason']}) after "
                    f"{plural(e['num_output_tokens'], 'token')}")
        if text is not None:
            out.append((side, text, list(table)))
    return out


def expected_readout(data: dict[str, Any]) -> str:
    start = next(e for e in data["decode"]["events"] if e["kind"] == "engine_started")
    arrived = next(e for e in data["decode"]["events"] if e["kind"] == "request_arrived")
    n, per_token = len(data["prompt_token_ids"]), start["kv_bytes_per_token"]
    lines = [f"{data['connector']}: {plural(n, 'prompt token')}, max_tokens "
             f"{arrived['max_tokens']}; blocks of {start['block_size']} tokens, "
             f"{start['dtype']}, {per_token:,} KV bytes per token"]
    lines += [f"{side}: {text}" for side, text, _ in story(data)]
    for side in ("prefill", "decode"):
        s = data[side]["stats"]
        lines.append(f"{side} server: {s['num_computed_prompt_tokens']:,} of {n:,} prompt tokens "
                     f"computed, {plural(s['num_computed_tokens'], 'token')} in "
                     f"{plural(s['num_steps'], 'step')}; {s['num_free_blocks']} of "
                     f"{s['num_blocks']} blocks free at the end")
    moves = [e for e in data["prefill"]["events"] if e["kind"] == "kv_transferred"
             and e["direction"] in ("save", "send")]
    [load] = [e for e in data["decode"]["events"] if e["kind"] == "kv_transferred"]
    assert load["ok"] and load["num_bytes"] == n * per_token and load["num_tokens"] == n
    lines.append(f"K/V moved: {plural(n, 'token')} × {per_token:,} bytes per token = "
                 f"{nbytes(n * per_token)}, as the load measured; measured time: "
                 f"{moves[0]['direction']} {ms(1000 * moves[0]['seconds'], 2)}, "
                 f"load {ms(1000 * load['seconds'], 2)}")
    assert data["single"]["identical"]
    lines.append(f"tokens: {', '.join(map(str, data['output']['token_ids']))}; "
                 "a single engine's: identical")
    return "\n".join(lines)


def run_with(page, action) -> tuple[dict[str, Any], dict[str, Any]]:
    with page.expect_response(is_disagg_run, timeout=RUN_MS) as info:
        action()
    response = info.value
    assert response.ok, response.text()
    return response.json(), response.request.post_data_json


def check_the_run(data: dict[str, Any], connector: str, max_tokens: int) -> None:
    """What the lesson is about, in the response itself."""
    n = len(data["prompt_token_ids"])
    pre, dec = data["prefill"]["stats"], data["decode"]["stats"]
    assert data["connector"] == connector
    assert dec["num_computed_prompt_tokens"] == 0  # the decode server computed no prompt
    assert pre["num_computed_prompt_tokens"] == n
    assert data["single"]["identical"] and len(data["output"]["token_ids"]) == max_tokens
    assert data["kv_transfer_params"]["first_token_id"] == data["output"]["token_ids"][0]
    assert pre["num_used_blocks"] == dec["num_used_blocks"] == 0
    directions = [e["direction"] for e in data["prefill"]["events"]
                  if e["kind"] == "kv_transferred"]
    assert directions == (["send", "release"] if connector == "ZmqConnector" else ["save"])


def test_disaggregation_lesson_follows_one_request_over_two_servers(page):
    page.goto(PAGE)
    readout = page.get_by_label("Disaggregation run readout")
    expect(readout).to_have_text("No run yet.")  # the run waits for the button
    expect(page.get_by_label("KV connector")).to_have_value("ZmqConnector")
    page.get_by_label("Tokens to generate").fill("6")
    page.get_by_label("Block size (tokens)").fill("8")
    button = page.get_by_role("button", name="Prefill here, decode there")
    data, body = run_with(page, button.click)
    prompt = page.get_by_label("Prompt", exact=True).input_value()
    assert body == {"prompt": prompt, "max_tokens": 6, "connector": "ZmqConnector",
                    "block_size": 8}
    check_the_run(data, "ZmqConnector", 6)
    expect(readout).to_have_text(expected_readout(data))
    expect(page.locator("#status")).to_contain_text("Done in")

    # the lanes: one row per lifecycle event, in its server's column
    told = story(data)
    rows = page.locator("#lanes li.dg-entry")
    expect(rows).to_have_count(len(told))
    expect(rows).to_have_text([f"{side}: {text}" for side, text, _ in told])
    expect(page.locator("#lanes li.dg-entry.dg-prefill")).to_have_count(
        sum(side == "prefill" for side, _, _ in told))
    expect(page.locator("#lanes li.dg-kv")).to_have_count(3)  # load, send, release
    # the counters, each labelled with how it is known
    counters = page.locator("#counters > div")
    expect(counters).to_have_count(9)
    n = len(data["prompt_token_ids"])
    per_token = data["decode"]["events"][0]["kv_bytes_per_token"]

    def counter(what: str):
        return counters.filter(has=page.locator("dt", has_text=what)).locator(".dg-value")

    expect(counter("Prompt tokens the decode server computed")).to_have_text(f"0 of {n}")
    expect(counter("Prompt tokens the prefill server computed")).to_have_text(f"{n} of {n}")
    expect(counter("K/V the prompt takes")).to_have_text(nbytes(n * per_token))
    [load] = [e for e in data["decode"]["events"] if e["kind"] == "kv_transferred"]
    expect(counter("K/V loaded by the decode server")).to_have_text(
        f"{nbytes(load['num_bytes'])} in {ms(1000 * load['seconds'], 2)}")
    expect(counter("Same tokens as a single engine")).to_have_text("yes")
    for how in counters.locator(".dg-how").all_inner_texts():
        assert how.split(":")[0] in ("measured", "computed", "compared"), how

    # the stepper, from the keyboard: it opens at the first event
    where = page.locator("#lifecycle-text")
    current = page.locator("#lanes li.current")

    def at(i: int) -> None:
        side, text, held = told[i]
        line = f"{side}: {text}"
        expect(where).to_have_text(f"step {i + 1} of {len(told)}: {line}")
        expect(current).to_have_count(1)
        expect(current).to_have_text(line)
        expect(current).to_have_attribute("aria-current", "step")
        expect(current).to_have_attribute("data-entry", str(i))
        expect(page.locator("#lanes li.later")).to_have_count(len(told) - i - 1)
        tables = {"prefill": [], "decode": []}
        for s, _, t in told[:i + 1]:
            tables[s] = t
        for s, name in (("prefill", "Prefill server"), ("decode", "Decode server")):
            if tables[s]:
                label = f"{name}: blocks {', '.join(map(str, tables[s]))}"
                expect(page.get_by_label(label, exact=True)).to_have_count(1)
            expect(page.locator(f"#held li.dg-{s} .dg-none")).to_have_count(0 if tables[s] else 1)
        assert tables[side] == held

    at(0)
    slider = page.locator("#lifecycle")
    slider.focus()
    page.keyboard.press("ArrowRight")
    at(1)
    assert told[1][1].endswith("allocated")
    # to the decode server's load: the producer still holds its blocks there
    load = next(i for i, (s, text, _) in enumerate(told) if text.startswith("K/V loaded"))
    for _ in range(load - 1):
        page.keyboard.press("ArrowRight")
    at(load)
    assert told[load][2] and [t for s, _, t in told[:load] if s == "prefill"][-1]
    page.keyboard.press("End")
    at(len(told) - 1)
    assert told[-1][0] == "prefill"
    assert told[-1][1].endswith("freed (after the decode server took the K/V)")
    page.locator("#lifecycle-prev").focus()
    page.keyboard.press("Enter")
    at(len(told) - 2)
    slider.focus()
    page.keyboard.press("Home")
    at(0)
    screenshot(page, "disaggregation")

    # narrow: one column, no horizontal scroll
    page.set_viewport_size({"width": 375, "height": 900})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "disaggregation-375px")
    page.set_viewport_size({"width": 1280, "height": 900})

    # the other connector, run from the keyboard (Enter in the form)
    page.get_by_label("KV connector").select_option("SharedStorageConnector")
    tokens = page.get_by_label("Tokens to generate")
    tokens.fill("4")
    data, body = run_with(page, lambda: tokens.press("Enter"))
    assert body["connector"] == "SharedStorageConnector" and body["max_tokens"] == 4
    check_the_run(data, "SharedStorageConnector", 4)
    expect(readout).to_have_text(expected_readout(data))
    told = story(data)
    # the producer freed its blocks right after the save, inside its one step
    saved = next(i for i, (_, text, _) in enumerate(told) if text.startswith("K/V saved"))
    assert told[saved + 1][0] == "prefill" and told[saved + 1][1].endswith(
        "freed (its K/V is in shared storage)")
    expect(rows).to_have_count(len(told))
    at(0)


def test_a_form_without_a_prompt_is_refused_in_the_page(page):
    page.goto(PAGE)
    page.get_by_label("Prompt", exact=True).fill("   ")
    page.get_by_role("button", name="Prefill here, decode there").click()
    expect(page.get_by_role("alert")).to_have_text("Preparing the run failed: write a prompt first")
    expect(page.get_by_label("Disaggregation run readout")).to_have_text("No run yet.")
