"""The lessons on the model's insides, part two (transformer block, sampling, prefill vs
decode, why cache K and V) in a real browser against a real server: each page starts
its run on load, the test drives its controls (keyboard included), and what the page
prints must equal what the API answered, formatted here in Python from the JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.browser.scope_fold import js_number as js
from tests.browser.scope_fold import screenshot

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

FIRST_RUN_MS = 180_000  # the first forward pass of a test process is slow


def test_js_number_formatting():
    assert [js(v) for v in (1.0, 0.5, 1e-05, 123456.0, 1.5e-7, 1e21, -2.25, 3, 295.224)] == [
        "1", "0.5", "0.00001", "123456", "1.5e-7", "1e+21", "-2.25", "3", "295.224"]


def q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def api(path: str, method: str = "POST"):
    def match(response) -> bool:
        return response.url.split("?")[0].endswith(f"/scope/api/{path}") and \
            response.request.method == method
    return match


def goto(page, lesson: str, path: str) -> tuple[dict, dict | None]:
    """Open a lesson; the response of the run it starts on load, and its request body."""
    with page.expect_response(api(path), timeout=FIRST_RUN_MS) as info:
        page.goto(f"/lessons/{lesson}.html")
    response = info.value
    assert response.ok, response.text()
    return response.json(), response.request.post_data_json


def answered(info) -> tuple[dict, dict | None]:
    response = info.value
    assert response.ok, response.text()
    return response.json(), response.request.post_data_json


# -- the transformer block ---------------------------------------------------------------


def block_readout(d: dict) -> str:
    p = d["position"]
    lines = [f"prompt: {len(d['tokens'])} tokens; position {p} ({q(d['tokens'][p])}, id "
             f"{d['token_ids'][p]}); layer {d['layer']} of {d['num_layers']} "
             f"(0–{d['num_layers'] - 1})",
             f"hidden size {d['hidden_size']}, MLP intermediate size {d['intermediate_size']}",
             "vector norms along the path:",
             *[f"  {s['name']}: {js(s['norm'])}" for s in d["path"]],
             f"top {len(d['mlp_top'])} MLP neurons by |silu(gate)·up|:",
             *[f"  neuron {n['neuron']}: gate {js(n['gate'])}, up {js(n['up'])}, "
               f"silu(gate)·up {js(n['activation'])}" for n in d["mlp_top"]],
             f"embedding norm: {js(d['embedding_norm'])}",
             "residual out by layer: " + ", ".join(js(la["residual_out"]) for la in d["layers"]),
             f"after the final RMSNorm: {js(d['final_norm'])}"]
    series = [("embedding", d["embedding_norm"])] + [
        (f"after layer {la['layer']}", la["residual_out"]) for la in d["layers"]]
    best = series[0]
    for s in series[1:]:
        if s[1] > best[1]:
            best = s
    lines.append(f"largest residual norm: {js(best[1])} ({best[0]})")
    return "\n".join(lines)


def test_transformer_block_follows_layer_and_position(page):
    data, body = goto(page, "transformer-block", "inside/block")
    readout = page.locator("#readout")
    expect(readout).to_have_text(block_readout(data))
    assert body["position"] == -1 and data["position"] == len(data["tokens"]) - 1
    assert [s["name"] for s in data["path"]] == [
        "residual in", "input RMSNorm", "attention output", "residual after attention",
        "post-attention RMSNorm", "MLP output", "residual out"]
    # the path's last point is the layer's output, the same norm the per-layer list has
    assert data["path"][-1]["norm"] == data["layers"][data["layer"]]["residual_out"]
    expect(page.locator("#flow li")).to_have_count(7)
    expect(page.locator("#layer option")).to_have_count(data["num_layers"])
    expect(page.locator("#stream circle")).to_have_count(data["num_layers"] + 1)

    # another layer, chosen from the keyboard: the select re-runs on change
    layer = data["layer"]
    with page.expect_response(api("inside/block")) as info:
        page.locator("#layer").focus()
        page.keyboard.press("ArrowDown")
    data, body = answered(info)
    assert body["layer"] == layer + 1 == data["layer"]
    expect(readout).to_have_text(block_readout(data))
    expect(page.locator("#stream circle.current")).to_have_count(1)

    # another token position
    with page.expect_response(api("inside/block")) as info:
        page.locator("#position").select_option("2")
    data, body = answered(info)
    assert body["position"] == 2 == data["position"]
    expect(readout).to_have_text(block_readout(data))
    expect(page.locator("#tokens li.current")).to_have_text(data["tokens"][2])
    expect(page.locator("#flow li").last).to_contain_text(js(data["path"][-1]["norm"]))
    screenshot(page, "transformer-block")


# -- sampling ----------------------------------------------------------------------------


def off(value: Any, off_value: Any, text: str = "off") -> str:
    return f"{js(value)} ({text})" if value == off_value else js(value)


def sampling_readout(d: dict) -> str:
    p = d["params"]
    shown = d["candidates"]
    kept = [c for c in shown if c["survives"]]
    return "\n".join([
        f"prompt: {len(d['tokens'])} tokens, the next token after {q(d['tokens'][-1])}",
        f"temperature {off(p['temperature'], 0, 'greedy')}, top-k {off(p['top_k'], 0)}, "
        f"top-p {off(p['top_p'], 1)}, min-p {off(p['min_p'], 0)}, seed {p['seed']}",
        f"survivors: {d['num_survivors']} of {d['vocab_size']} tokens",
        f"kept among the {len(shown)} most likely: "
        + (", ".join(f"{q(c['text'])} {js(c['prob_final'])}" for c in kept) or "none"),
        f"filtered among the {len(shown)} most likely: {len(shown) - len(kept)}",
        f"drawn with seed {p['seed']}: {q(d['drawn']['text'])} (id {d['drawn']['id']}), "
        f"p {js(d['drawn']['prob_final'])}",
        f"greedy: {q(d['greedy']['text'])} (id {d['greedy']['id']})",
    ])


def test_sampling_sliders_ask_the_engines_sampler(page):
    data, body = goto(page, "sampling", "inside/sampling")
    readout = page.locator("#readout")
    expect(readout).to_have_text(sampling_readout(data))
    assert body["temperature"] == 1 and body["top_k"] == 0
    expect(page.locator("#candidates li")).to_have_count(body["show"])

    # temperature one step down from the keyboard
    with page.expect_response(api("inside/sampling")) as info:
        page.locator("#temperature").focus()
        page.keyboard.press("ArrowLeft")
    data, body = answered(info)
    assert body["temperature"] == 0.95 == data["params"]["temperature"]
    expect(readout).to_have_text(sampling_readout(data))
    expect(page.locator("#temperature")).to_have_attribute("aria-valuetext", "0.95")

    # top-k 5: five quick presses, one request after the debounce (a late one at most)
    with page.expect_response(lambda r: api("inside/sampling")(r)
                              and r.request.post_data_json["top_k"] == 5) as info:
        page.locator("#top-k").focus()
        for _ in range(5):
            page.keyboard.press("ArrowRight")
    data, body = answered(info)
    expect(readout).to_have_text(sampling_readout(data))
    assert data["num_survivors"] <= 5
    filtered = sum(not c["survives"] for c in data["candidates"])
    expect(page.locator("#candidates li.filtered")).to_have_count(filtered)
    assert filtered >= len(data["candidates"]) - 5

    # temperature 0 is greedy: one survivor, drawn = greedy
    with page.expect_response(lambda r: api("inside/sampling")(r)
                              and r.request.post_data_json["temperature"] == 0) as info:
        page.locator("#temperature").focus()
        page.keyboard.press("Home")
    data, body = answered(info)
    expect(readout).to_have_text(sampling_readout(data))
    assert data["num_survivors"] == 1 and data["drawn"]["id"] == data["greedy"]["id"]
    expect(page.locator("#temperature")).to_have_attribute("aria-valuetext", "0 (greedy)")
    expect(readout).to_contain_text("temperature 0 (greedy)")
    screenshot(page, "sampling")


# -- prefill vs decode ---------------------------------------------------------------------


def bound(intensity: float, ridge: float) -> str:
    return "memory-bound" if intensity < ridge else "compute-bound"


def phases_readout(d: dict, m: dict) -> str:
    steps = d["steps"]
    prefill = [s for s in steps if s["phase"] == "prefill"]
    decode = [s for s in steps if s["phase"] == "decode"]
    g, model, summary = d["gpu"], d["model"], d["summary"]

    def step(s: dict) -> str:
        return (f"{s['phase']} step {s['step']}: {s['num_tokens']} tokens, context "
                f"{s['context_len']}, {js(s['time_ms'])} ms, intensity {js(s['intensity'])} "
                f"FLOP/byte, {js(s['gflops_per_s'])} GFLOP/s, {js(s['gb_per_s'])} GB/s "
                f"({bound(s['intensity'], m['ridge'])} on this machine)")

    lines = [
        f"prompt: {d['prompt_tokens']} tokens; {len(steps)} steps: {len(prefill)} prefill, "
        f"{len(decode)} decode",
        f"model: {js(model['params'])} parameters, {model['dtype']}, weights "
        f"{js(model['weight_bytes'])} bytes, {js(model['flops_per_token'])} FLOP per token in the "
        "decoder layers' linears",
        f"this machine (measured: {m['method']}): peak {js(m['peak_gflops'])} GFLOP/s, "
        f"bandwidth {js(m['bandwidth_gbs'])} GB/s, ridge {js(m['ridge'])} FLOP/byte",
        f"  cpu: {m['cpu']}",
        f"{g['name']} (computed from the published spec, not measured): peak "
        f"{js(g['peak_gflops'])} GFLOP/s, bandwidth {js(g['bandwidth_gbs'])} GB/s, ridge "
        f"{js(g['ridge'])} FLOP/byte",
        *[step(s) for s in prefill],
        f"prefill: {js(summary['prefill_ms'])} ms, intensity {js(summary['prefill_intensity'])} "
        "FLOP/byte",
    ]
    if decode:
        mean = summary["decode_intensity_mean"]
        lines += [step(decode[0]),
                  f"decode: mean {js(summary['decode_ms_mean'])} ms per step, mean intensity "
                  f"{js(mean)} FLOP/byte ({bound(mean, m['ridge'])} on this machine, "
                  f"{bound(mean, g['ridge'])} on the {g['name']})"]
    else:
        lines.append("decode: no decode step (one token asked for)")
    return "\n".join(lines)


def test_prefill_decode_steps_on_two_rooflines(page):
    data, _ = goto(page, "prefill-decode", "inside/phases")
    readout = page.locator("#readout")
    expect(readout).to_have_text(phases_readout(data, data["machine"]))

    page.locator("#prompt").fill("Why is the sea salty?")
    page.locator("#max-tokens").fill("4")
    with page.expect_response(api("inside/phases")) as info:
        page.get_by_role("button", name="Run and time it").click()
    data, body = answered(info)
    assert body == {"prompt": "Why is the sea salty?", "max_tokens": 4}
    steps = data["steps"]
    assert [s["phase"] for s in steps] == ["prefill"] + ["decode"] * 3
    assert steps[0]["num_tokens"] == data["prompt_tokens"]
    expect(readout).to_have_text(phases_readout(data, data["machine"]))
    # one bar per step; a dot per step on each roofline, hollow (projected) on the GPU's
    expect(page.locator("#steps rect.pd-tokens")).to_have_count(len(steps))
    expect(page.locator("#roof-machine circle.pd-dot:not(.projected)")).to_have_count(len(steps))
    expect(page.locator("#roof-gpu circle.pd-dot.projected")).to_have_count(len(steps))
    expect(page.locator("#roof-gpu")).to_contain_text("decode (projection)")
    expect(page.locator("#roof-gpu")).to_contain_text(
        "computed from the published spec, not measured")
    expect(page.locator("#roof-machine")).to_contain_text(f"ridge {js(data['machine']['ridge'])}")
    assert data["gpu"]["measured"] is False and data["machine"]["measured"] is True

    with page.expect_response(api("inside/roofline", "GET")) as info:
        page.get_by_role("button", name="Measure again").click()
    assert info.value.url.endswith("/scope/api/inside/roofline?measure=true")
    machine, _ = answered(info)
    expect(readout).to_have_text(phases_readout(data, machine))
    expect(page.locator("#measure-status")).to_have_text(
        f"Measured again: peak {js(machine['peak_gflops'])} GFLOP/s, bandwidth "
        f"{js(machine['bandwidth_gbs'])} GB/s.")
    screenshot(page, "prefill-decode")


# -- why cache K and V ---------------------------------------------------------------------


def recompute_readout(d: dict) -> str:
    t = d["totals"]

    def run(name: str, rows: list[dict], ms: float, computed: int) -> list[str]:
        a, b = rows[0], rows[-1]
        return [f"{name}: {js(ms)} ms in all, {computed} tokens computed",
                f"  first token: {js(a['time_ms'])} ms at context {a['context_len']} "
                f"({a['tokens_computed']} computed); last token: {js(b['time_ms'])} ms at context "
                f"{b['context_len']} ({b['tokens_computed']} computed)"]

    return "\n".join([
        f"prompt: {d['prompt_tokens']} tokens; generated {len(d['cached'])} tokens: {q(d['text'])}",
        *run("with the KV cache", d["cached"], t["cached_ms"], t["cached_tokens_computed"]),
        *run("recomputing everything", d["recompute"], t["recompute_ms"],
             t["recompute_tokens_computed"]),
        f"identical tokens: {'yes' if d['identical'] else 'no'}",
    ])


def test_why_kv_cache_compares_the_two_runs(page):
    data, _ = goto(page, "why-kv-cache", "inside/recompute")
    readout = page.locator("#readout")
    expect(readout).to_have_text(recompute_readout(data))

    page.locator("#prompt").fill("The cache keeps")
    page.locator("#max-tokens").fill("5")
    with page.expect_response(api("inside/recompute")) as info:
        page.locator("#max-tokens").press("Enter")
    data, body = answered(info)
    assert body == {"prompt": "The cache keeps", "max_tokens": 5}
    expect(readout).to_have_text(recompute_readout(data))
    n, p = 5, data["prompt_tokens"]
    assert [r["tokens_computed"] for r in data["cached"]] == [p] + [1] * (n - 1)
    assert [r["tokens_computed"] for r in data["recompute"]] == [p + i for i in range(n)]
    assert data["identical"]
    expect(page.locator("#chart polyline")).to_have_count(2)
    expect(page.locator("#chart circle")).to_have_count(2 * n)
    expect(page.locator("#per-token tbody tr")).to_have_count(n)
    expect(page.locator("#identical")).to_have_text("yes")
    expect(page.locator("#recompute-ms")).to_have_text(f"{js(data['totals']['recompute_ms'])} ms")
    screenshot(page, "why-kv-cache")


# -- narrow screens --------------------------------------------------------------------------


@pytest.mark.parametrize("lesson,path", [("transformer-block", "inside/block"),
                                         ("sampling", "inside/sampling"),
                                         ("prefill-decode", "inside/phases"),
                                         ("why-kv-cache", "inside/recompute")])
def test_narrow_screen(open_page, lesson, path):
    page = open_page(width=375)
    page.emulate_media(reduced_motion="reduce")
    goto(page, lesson, path)
    expect(page.locator("#readout")).to_contain_text("prompt: ")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    fill = page.locator(".fill").first
    if fill.count():
        assert fill.evaluate("e => getComputedStyle(e).transitionDuration") == "0s"
    screenshot(page, f"{lesson}-375px")
