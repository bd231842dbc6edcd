"""The lessons on sharing blocks between the sequences of one request: parallel sampling
(forks, refcounts, copy-on-write) and beam search (a tree of beams, pruning frees
blocks). Each page runs the real engine through the API; what it prints must equal
what the run's events say, folded here in Python independently of the page."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from tests.browser.scope_fold import (
    Folded,
    fold,
    folds,
    ids,
    is_lab_run,
    js_fixed,
    screenshot,
    step_at,
    stops,
)

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect


def slider(page):
    return page.locator(".player input[type=range].position")


def goto_lab(page, path: str) -> tuple[dict, dict]:
    """Open a lesson page; the lab run it starts on load and what it asked for. (The
    first forward pass of a test process is slow: when this module runs alone, its
    first run pays for it, so it gets longer than the usual timeout.)"""
    with page.expect_response(is_lab_run, timeout=120_000) as info:
        page.goto(path)
    response = info.value
    assert response.ok, response.text()
    return response.json(), response.request.post_data_json


def text(s: str) -> str:
    """JSON.stringify of a string."""
    return json.dumps(s, ensure_ascii=False)


# -- parallel sampling -----------------------------------------------------------------------


def peak(events: list[dict]) -> dict:
    """The first moment the most blocks were held, and the block tables then."""
    best = None
    for f in folds(events):
        held = sum(r > 0 for r in f.refs)
        if best is None or held > best["held"]:
            best = {"held": held, "referenced": sum(len(t) for t in f.tables.values()),
                    "step": f.step, "sequences": len(f.tables)}
    return best


def parallel_readout(run: dict, pos: int) -> str:
    events = run["events"]
    if pos == 0:
        return f"event 0 of {len(events)}: before the engine started"
    f = fold(events, pos)
    bs = events[0]["block_size"]
    prompt = len(next(e for e in events if e["kind"] == "request_arrived")["prompt_token_ids"])
    blocks = math.ceil(prompt / bs)
    how = ("all full: nothing to copy" if prompt % bs == 0
           else f"{prompt // bs} full, the last holds {prompt % bs}")
    lines = [f"step {step_at(events, pos)}, event {pos} of {len(events)}",
             f"prompt: {prompt} tokens in {blocks} blocks of {bs} ({how})"]
    for rid in f.order:
        r = f.reqs[rid]
        lines.append(f"sequence {rid} ({r.status}, {r.computed} tokens computed, {r.outputs} "
                     f"generated): [{ids(f.tables.get(rid, []))}]")
    shared = [f"{b} (refcount {ref})" for b, ref in enumerate(f.refs) if ref > 1]
    lines.append(f"shared blocks: {', '.join(shared) if shared else 'none'}")
    lines.append(f"copy-on-write copies so far: {f.copies}")
    lines.append(f"free blocks: {f.free} of {len(f.refs)}")
    held = sum(r > 0 for r in f.refs)
    referenced = sum(len(t) for t in f.tables.values())
    lines.append(f"blocks held: {held}; the same tables without sharing: {referenced}")
    p = peak(events)
    own = p["referenced"] - p["sequences"] * blocks
    lines.append(f"memory at the peak, computed from this run's sizes: {p['held']} blocks held "
                 f"with sharing (step {p['step']}); as {p['sequences']} separate requests: "
                 f"{p['sequences']} × {blocks} prompt blocks + {own} blocks of their own = "
                 f"{p['referenced']}")
    if pos == len(events):
        lines.append("completions:")
        completions = run["outputs"][0]["completions"]
        lines += [f"  {i}: {text(c['text'])}" for i, c in enumerate(completions)]
    return "\n".join(lines)


def test_parallel_sampling_shares_the_prompt_and_copies_on_write(page):
    run, body = goto_lab(page, "/lessons/parallel-sampling.html")
    events = run["events"]
    n = body["n"]
    assert n == 4 and body["temperature"] > 0
    readout = page.locator("#readout")
    # it opens after the step that computed the prompt and forked the other sequences
    at = stops(events)[0]
    expect(readout).to_have_text(parallel_readout(run, at))
    f = fold(events, at)
    forks = [e for e in events[:at] if e["kind"] == "sequence_forked"]
    assert [e["request_id"] for e in forks] == [f"0#{i}" for i in range(1, n)]
    for e in forks:  # every sequence's table is the parent's, each block held n times
        assert f.tables[e["request_id"]] == f.tables["0"] == e["block_ids"]
    for block in f.tables["0"]:
        assert f.refs[block] == n
        expect(page.locator(f"#pool .cell[data-block='{block}'] .ref")).to_have_text(f"×{n}")
        expect(page.locator(f"#pool .cell[data-block='{block}']")).to_have_attribute(
            "aria-label", f"block {block}: shared by requests 0, 0#1, 0#2 and 0#3 (refcount {n})")
    expect(page.locator("#tables li.shared")).to_have_count(n * len(f.tables["0"]))

    # the next step writes the first new tokens: the partly filled block is copied n - 1 times
    page.get_by_role("button", name="Next step", exact=True).click()
    at = stops(events)[1]
    expect(readout).to_have_text(parallel_readout(run, at))
    prompt_len = f.reqs["0"].prompt_len
    bs = events[0]["block_size"]
    assert prompt_len % bs, "the default prompt should end inside a block"
    copies = [e for e in events[:at] if e["kind"] == "copy_on_write"]
    assert len(copies) == n - 1
    assert {e["src_block_id"] for e in copies} == {f.tables["0"][-1]}
    expect(page.locator("#pool .cell.hl")).to_have_count(n - 1)
    expect(page.locator("#copies li")).to_have_count(n - 1)

    # the end: every block back, the copies counted, the n completions
    page.get_by_role("button", name="End", exact=True).click()
    expect(readout).to_have_text(parallel_readout(run, len(events)))
    total = sum(e["kind"] == "copy_on_write" for e in events)
    expect(readout).to_contain_text(f"copy-on-write copies so far: {total}\n")
    completions = run["outputs"][0]["completions"]
    assert len(completions) == n
    items = page.locator("#completions li .text")
    expect(items).to_have_count(n)
    for i, c in enumerate(completions):
        expect(items.nth(i)).to_have_text(c["text"])
    p = peak(events)
    assert p["held"] < p["referenced"]
    expect(page.locator("#memory-note")).to_contain_text(
        f"Sharing saved {p['referenced'] - p['held']} blocks")
    slider(page).fill(str(stops(events)[1]))
    screenshot(page, "parallel-sampling")

    # from the keyboard: n down to 2 on its slider, then run again with Enter
    page.locator("#n").focus()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#n")).to_have_attribute("aria-valuetext", "2 completions")
    page.locator("#prompt").focus()
    with page.expect_response(is_lab_run) as info:
        page.keyboard.press("Enter")
    run = info.value.json()
    assert info.value.request.post_data_json["n"] == 2
    expect(readout).to_have_text(parallel_readout(run, stops(run["events"])[0]))
    assert len(run["outputs"][0]["completions"]) == 2


# -- beam search -----------------------------------------------------------------------------


def token_texts(base: str, events: list[dict]) -> dict[int, str]:
    wanted = {b["token_id"] for e in events if e["kind"] == "beam_step" for b in e["beams"]}
    wanted |= {t for e in events if e["kind"] == "beam_step" for h in e["finished"]
               for t in h["token_ids"]}
    with httpx.Client(base_url=base, timeout=30) as client:
        return {t: client.post("/detokenize", json={"tokens": [t]}).json()["prompt"]
                for t in sorted(wanted)}


def fixed2(x: float | None) -> str:
    return "—" if x is None else js_fixed(x, 2)


def extends(record: dict | None, tokens: list[int]) -> bool:
    return record is not None and any(
        len(h["token_ids"]) == len(tokens) + 1 and h["token_ids"][:len(tokens)] == tokens
        for h in record["finished"])


def live_beams(f: Folded, group: str) -> list[str]:
    def root(rid: str) -> str:
        while f.reqs[rid].parent is not None:
            rid = f.reqs[rid].parent
        return rid

    records = f.beam_steps.get(group, [])
    latest = [b["request_id"] for b in records[-1]["beams"]] if records else []
    live = [rid for rid in f.order if f.reqs[rid].status == "running" and root(rid) == group]
    at = {rid: latest.index(rid) if rid in latest else len(latest) + i
          for i, rid in enumerate(live)}
    return sorted(live, key=at.__getitem__)


def beam_readout(run: dict, body: dict, pos: int, texts: dict[int, str]) -> str:
    events = run["events"]
    f = fold(events, pos)
    records = f.beam_steps.get("0", [])
    record = records[-1] if records else None

    def words(tokens: list[int]) -> str:
        return text("".join(texts[t] for t in tokens))

    def ended(rid: str) -> bool:
        r = f.reqs[rid]
        return extends(next((x for x in records if x["step"] == r.finished_step), None),
                       r.token_ids)

    scores = {b["request_id"]: b["score"] for x in records for b in x["beams"]}
    lines = [f"step {step_at(events, pos)}, event {pos} of {len(events)}",
             f"beam width {body['beam_width']}, length penalty {body['length_penalty']}; "
             f"beam steps so far: {len(records)}"]
    live = live_beams(f, "0")
    if live:
        lines.append("live beams, best first:")
        lines += [f"  {rid}: score {fixed2(scores.get(rid))}, blocks [{ids(f.tables[rid])}], "
                  f"{words(f.reqs[rid].token_ids)}" for rid in live]
    else:
        lines.append("live beams: none")
    now = [(i, e) for i, e in enumerate(events[:pos]) if e["step"] == f.step]
    forked = [f"{e['request_id']} from {e['parent_id']}" for _, e in now
              if e["kind"] == "sequence_forked"]
    lines.append(f"forked at this step: {', '.join(forked) if forked else 'none'}")
    pruned = []
    for i, e in now:
        if e["kind"] == "request_finished" and e["reason"] == "pruned":
            freed = next(x for x in reversed(events[:i]) if x["kind"] == "blocks_freed"
                         and x["request_id"] == e["request_id"])
            pruned.append((e["request_id"], freed["block_ids"]))
    back: list[int] = []
    for _, released in pruned:
        back += [b for b in released if f.refs[b] == 0 and b not in back]
    names = [f"{rid} (ended: joined the finished list)" if ended(rid) else rid
             for rid, _ in pruned]
    lines.append(f"pruned at this step: {', '.join(names) if names else 'none'}")
    for rid, released in pruned:
        mine = [b for b in released if b in back]
        lines.append(f"  {rid} let go of blocks {ids(released)}; back in the free pool: "
                     f"{ids(mine) if mine else 'none'}")
    lines.append(f"freed by pruning at this step: {ids(back) if back else 'none'}")
    so_far = [f"{rid} (ended)" if ended(rid) else rid for rid in f.order
              if f.reqs[rid].finish_reason == "pruned"]
    lines.append(f"beams pruned so far: {', '.join(so_far) if so_far else 'none'}")
    if record and record["finished"]:
        lines.append("finished, best first:")
        lines += [f"  {i}. score {fixed2(h['score'])}, {h['finish_reason']}, "
                  f"{words(h['token_ids'])}" for i, h in enumerate(record["finished"], 1)]
    else:
        lines.append("finished: none yet")
    lines.append(f"free blocks: {f.free} of {len(f.refs)}")
    if record and record["done"]:
        lines.append("final beams, best first (the API's output):")
        lines += [f"  {i}. log-probability {fixed2(c['cumulative_logprob'])}, "
                  f"{c['finish_reason']}, {text(c['text'])}"
                  for i, c in enumerate(run["outputs"][0]["completions"], 1)]
    return "\n".join(lines)


def test_beam_search_tree_prunes_and_frees(page, scope_server):
    run, body = goto_lab(page, "/lessons/beam-search.html")
    events = run["events"]
    assert body["beam_width"] == 3 and body["ignore_eos"] is False
    assert body["prompts"][0].endswith("What is the capital of France?<|im_end|>\n"
                                       "<|im_start|>assistant\n")
    texts = token_texts(scope_server.url, events)
    readout = page.locator("#readout")
    # it opens after the first step that pruned a beam
    first = next(i for i, e in enumerate(events)
                 if e["kind"] == "request_finished" and e["reason"] == "pruned")
    at = next(s for s in stops(events) if s > first)
    expect(readout).to_have_text(beam_readout(run, body, at, texts))
    victim = events[first]["request_id"]
    freed = events[first - 1]
    assert freed["kind"] == "blocks_freed" and freed["request_id"] == victim
    expect(readout).to_contain_text(f"  {victim} let go of blocks {ids(freed['block_ids'])};")
    back = [b for b in freed["block_ids"] if fold(events, at).refs[b] == 0]
    assert back, "a pruned beam holds at least its last block alone"
    expect(page.locator("#pool .cell.hl")).to_have_count(len(back))
    # the tree: one node per beam per step so far, the victim's node marked as pruned
    f = fold(events, at)
    records = f.beam_steps["0"]
    nodes = sum(len(r["beams"]) for r in records)
    expect(page.locator("#tree .node:not(.root)")).to_have_count(nodes)
    pruned = sum(r.finish_reason == "pruned" for r in f.reqs.values())
    expect(page.locator("#tree svg")).to_have_attribute(
        "aria-label", f"Beam tree after {len(records)} beam steps: live beams, best first: "
        f"{', '.join(live_beams(f, '0'))}; {pruned} beam{'s' if pruned > 1 else ''} pruned "
        "so far.")

    # step on, then to the last step of the search and the end
    page.get_by_role("button", name="Next step", exact=True).click()
    at = next(s for s in stops(events) if s > at)
    expect(readout).to_have_text(beam_readout(run, body, at, texts))
    page.get_by_role("button", name="End", exact=True).click()
    expect(readout).to_have_text(beam_readout(run, body, len(events), texts))
    done = [e for e in events if e["kind"] == "beam_step"][-1]
    assert done["done"]
    completions = run["outputs"][0]["completions"]
    assert [c["token_ids"] for c in completions] == [h["token_ids"] for h in done["finished"]]
    items = page.locator("#finished li .text")
    expect(items).to_have_count(len(completions))
    for i, c in enumerate(completions):
        expect(items.nth(i)).to_have_text(c["text"])
    assert run["final"]["num_free_blocks"] == events[0]["num_blocks"]
    # every prune handed its blocks back on its own step (the readout agrees at each)
    prunes = [i for i, e in enumerate(events)
              if e["kind"] == "request_finished" and e["reason"] == "pruned"]
    assert len(prunes) >= 2
    slider(page).focus()
    for i in prunes[1:3]:
        pos = next(s for s in stops(events) if s > i)
        slider(page).fill(str(pos))
        expect(readout).to_have_text(beam_readout(run, body, pos, texts))
    page.keyboard.press("ArrowLeft")
    expect(readout).to_have_text(beam_readout(run, body, pos - 1, texts))
    slider(page).fill(str(next(s for s in stops(events) if s > first)))
    screenshot(page, "beam-search")
