"""The tensor parallelism lesson: the page runs the real engine on two worker processes
(one gloo group, the bundled model split unevenly by KV group) and watches one layer's
row-parallel linears. What it prints (each rank's heads, neurons, vocabulary and weight
shapes, the watched layer's partial sums and their all-reduce, the block ids of each
request, the collectives of each step) must equal what the run's response says,
computed here in Python independently of the page."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.scope_fold import is_lab_run, js_fixed, js_pct, screenshot

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

PAGE = "/lessons/tensor-parallelism.html"
RUN_MS = 180_000  # two worker processes start per run; the first run of a process is slow
LINEARS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
WATCHED = ["o_proj", "down_proj"]


def span(r: list[int]) -> str:
    start, stop = r
    return f"{start}" if stop - start == 1 else f"{start}–{stop - 1}"


def counted(noun: str, r: list[int]) -> str:
    return f"{noun}{'' if r[1] - r[0] == 1 else 's'} {span(r)}"


def f4(x: float) -> str:
    return js_fixed(x, 4)


def ms(x: float, digits: int = 1) -> str:
    return f"{js_fixed(x, digits)} ms"


def shape(dims: list[int]) -> str:
    return "×".join(str(d) for d in dims)


def terms(texts: list[str]) -> str:
    return " + ".join(f"({t})" if i and t.startswith("-") else t for i, t in enumerate(texts))


def block_ids(events: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Each request's block ids, in the order the driver handed them out."""
    blocks: dict[str, list[int]] = {}
    for e in events:
        if e["kind"] == "request_arrived":
            blocks.setdefault(e["request_id"], [])
        elif e["kind"] == "blocks_allocated":
            blocks.setdefault(e["request_id"], []).extend(e["block_ids"])
    return blocks


def expected_readout(data: dict[str, Any]) -> str:
    events = data["events"]
    start = events[0]
    ranks = start["ranks"]
    lines = [f"tensor_parallel_size {start['tensor_parallel_size']} (split: {ranks[0]['split']}): "
             f"{start['num_heads']} query heads and {start['num_kv_heads']} KV heads of dim "
             f"{start['head_dim']}, {start['num_layers']} layers"]
    for r in ranks:
        lines.append(f"rank {r['rank']}: {counted('query head', r['q_heads'])}, "
                     f"{counted('KV head', r['kv_heads'])}, "
                     f"{counted('MLP neuron', r['intermediate'])}, "
                     f"vocabulary ids {span(r['vocab'])}")
        lines.append("  weights: " + ", ".join(f"{name} {shape(dims)}"
                                               for name, dims in r["weights"].items()))
        lines.append(f"  KV pool: {shape(r['kv_pool_shape'])}")
    counts = [sum(r["weights"][n][0] * r["weights"][n][1] for n in LINEARS) for r in ranks]
    total = sum(counts)
    lines.append("per layer: " + ", ".join(
        f"rank {r['rank']} holds {counts[i]:,}{'' if i else ' weights'} "
        f"({js_pct(counts[i] / total)})"
        for i, r in enumerate(ranks)))
    tp = data["tensor_parallel"]
    lines.append(f"layer {tp['layer']}, step {tp['step']} (the batch's last token row):")
    for key in WATCHED:
        recs = [r[key] for r in tp["ranks"]]
        lines.append(f"  {key}: {' + '.join(str(rec['input_columns']) for rec in recs)} input "
                     f"columns; dim 0: {terms([f4(rec['partial'][0]) for rec in recs])} = "
                     f"{f4(sum(rec['partial'][0] for rec in recs))} "
                     f"(all-reduced {f4(recs[0]['reduced'][0])})")
    lines.append("  all 8 dims of both: the partials add up to the all-reduced vector within 1e-4, "
                 "on every rank")
    for key in WATCHED:
        recs = [r[key] for r in tp["ranks"]]
        lines.append(f"  {key} time: " + "; ".join(
            f"rank {i} matmul {ms(rec['matmul_ms'], 3)}, all-reduce {ms(rec['all_reduce_ms'], 3)}"
            for i, rec in enumerate(recs)))
    where = ", ".join(f"{counted('KV head', r['kv_heads'])} on rank {r['rank']}" for r in ranks)
    lines.append(f"KV blocks (each block on every rank: {where}):")
    for rid, ids in block_ids(events).items():
        lines.append(f"  request {rid}: blocks {', '.join(str(b) for b in ids)}")
    steps = [e for e in events if e["kind"] == "step_end"]
    per_step = {s["num_collectives"] for s in steps}
    coll = sum(s["collective_ms"] for s in steps)
    fwd = sum(s["forward_ms"] for s in steps)
    count = (f"{min(per_step)}" if len(per_step) == 1 else f"{min(per_step)}–{max(per_step)}")
    lines.append(f"collectives: {count} per step, {len(steps)} steps; rank 0 spent {ms(coll)} in "
                 f"them of {ms(fwd)} forward ({js_pct(coll / fwd)})")
    return "\n".join(lines)


def test_tensor_parallel_lesson_shows_the_ranks_sums_and_blocks(page):
    page.goto(PAGE)
    readout = page.get_by_label("Tensor-parallel run readout")
    # nothing runs until asked: starting two workers takes seconds
    expect(readout).to_have_text("No run yet.")
    layer = page.get_by_label("Layer to watch")
    expect(layer).to_have_attribute("max", "29")  # from the server's model: 30 layers
    page.get_by_label("Prompts, one per line").fill(
        "The capital of France is\nOne, two, three, four,\nWater boils at")
    layer.fill("7")
    page.get_by_label("Tokens to generate").fill("5")
    button = page.get_by_role("button", name="Run on two ranks")
    with page.expect_response(is_lab_run, timeout=RUN_MS) as info:
        button.click()
        expect(button).to_be_disabled()  # while the server works
        expect(page.locator("#status")).to_contain_text("Running")
    response = info.value
    assert response.ok, response.text()
    data, body = response.json(), response.request.post_data_json
    assert body["tensor_parallel_size"] == 2 and body["watch_layer"] == 7
    assert body["max_tokens"] == 5 and len(body["prompts"]) == 3

    # the run: two ranks, the uneven split by KV group, 62 collectives per step
    start = data["events"][0]
    assert start["kind"] == "engine_started" and start["tensor_parallel_size"] == 2
    r0, r1 = start["ranks"]
    assert (r0["q_heads"], r0["kv_heads"], r1["q_heads"], r1["kv_heads"]) == (
        [0, 6], [0, 2], [6, 9], [2, 3])
    assert r0["weights"]["qkv_proj"] == [(6 + 2 + 2) * 64, 576]
    assert r1["weights"]["o_proj"] == [576, 3 * 64]
    steps = [e for e in data["events"] if e["kind"] == "step_end"]
    assert steps and all(s["num_collectives"] == 2 * 30 + 2 for s in steps)
    assert all(0 < s["collective_ms"] < s["forward_ms"] for s in steps)
    # the arithmetic of the all-reduce, in the JSON itself
    tp = data["tensor_parallel"]
    assert (tp["layer"], tp["step"]) == (7, steps[-1]["step"])
    for key in WATCHED:
        a, b = (r[key] for r in tp["ranks"])
        assert len(a["partial"]) == len(a["reduced"]) == 8
        for d in range(8):
            assert abs(a["partial"][d] + b["partial"][d] - a["reduced"][d]) < 1e-4
            assert abs(a["reduced"][d] - b["reduced"][d]) < 1e-4
    assert [r["o_proj"]["input_columns"] for r in tp["ranks"]] == [384, 192]
    assert [r["down_proj"]["input_columns"] for r in tp["ranks"]] == [768, 768]

    # the readout says exactly that
    expect(readout).to_have_text(expected_readout(data))
    expect(page.locator("#status")).to_contain_text("Done in")
    expect(button).to_be_enabled()

    # the pictures: six weights, 8 dims per watched linear, every block on both ranks
    expect(page.locator("#weights .tp-weight")).to_have_count(6)
    expect(page.locator("#weights .tp-bar").first).to_have_attribute(
        "aria-label", "qkv_proj, 960 output rows: q 0–5 (384) on rank 0, q 6–8 (192) on rank 1, "
                      "k 0–1 (128) on rank 0, k 2 (64) on rank 1, v 0–1 (128) on rank 0, "
                      "v 2 (64) on rank 1")
    for key in WATCHED:
        rows = page.locator(f"#{key}-table tbody tr")
        expect(rows).to_have_count(8)
        a, b = (r[key] for r in tp["ranks"])
        expect(rows.first.locator("td")).to_have_text(
            ["0", f4(a["partial"][0]), f4(b["partial"][0]), f4(a["partial"][0] + b["partial"][0]),
             f4(a["reduced"][0]), f4(b["reduced"][0]), "✓ equal"])
    blocks = block_ids(data["events"])
    assert len(blocks) == 3 and all(blocks.values())
    n = sum(len(ids) for ids in blocks.values())
    expect(page.locator("#kv .tp-kv-block.tp-r0")).to_have_count(n)
    expect(page.locator("#kv .tp-kv-block.tp-r1")).to_have_count(n)
    first = blocks["0"][0]
    expect(page.get_by_label(f"block {first} on rank 1: KV head 2")).to_have_count(1)
    expect(page.locator("#timing .bars").first.locator("li")).to_have_count(len(steps))
    expect(page.locator("#outputs li .text")).to_have_text([o["text"] for o in data["outputs"]])
    assert data["final"]["num_free_blocks"] == start["num_blocks"]
    screenshot(page, "tensor-parallelism")

    # narrow and dark: no horizontal scroll
    page.set_viewport_size({"width": 375, "height": 900})
    page.emulate_media(color_scheme="dark")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "tensor-parallelism-375px")
    page.set_viewport_size({"width": 1280, "height": 900})

    # a layer the model does not have: the server's 400 in the page's alert; the
    # picture of the previous run stays
    layer.fill("30")
    with page.expect_response(is_lab_run, timeout=RUN_MS) as info:
        layer.press("Enter")
    assert info.value.status == 400
    message = info.value.json()["error"]["message"]
    assert "watch_layer must be below the model's 30 layers" in message
    expect(page.get_by_role("alert")).to_have_text(
        f"The tensor-parallel run failed (HTTP 400): {message}")
    expect(page.locator("#status")).to_have_text("The picture below still shows the previous run.")
    expect(readout).to_have_text(expected_readout(data))
    expect(button).to_be_enabled()
