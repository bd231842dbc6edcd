"""The expert- and context-parallelism lesson: nothing runs, the server computes every
figure from published MoE shapes and the loaded model's config. The page asks
/scope/api/parallel-math on load and on every slider move; what it prints must equal
the answer, formatted here in Python independently of the page, and the answer's key
figures must follow from the shapes it lists."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.browser.scope_fold import js_fixed, js_pct, screenshot

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

PAGE = "/lessons/expert-context-parallelism.html"


# -- the page's number formats (js/format.js and the lesson's logic), in Python ----------


def js_int(x: float) -> str:
    return f"{math.floor(x + 0.5):,}"


def js_units(n: float, base: int, units: list[str]) -> str:
    i, v = 0, float(n)
    while abs(v) >= base and i < len(units) - 1:
        v /= base
        i += 1
    if i == 0:
        return f"{js_int(v)} {units[0]}"
    return f"{js_fixed(v, 0 if v >= 100 else 1 if v >= 10 else 2)} {units[i]}"


def js_bytes(n: float) -> str:
    return js_units(n, 1024, ["B", "KiB", "MiB", "GiB", "TiB"])


def flop(n: float) -> str:
    return js_units(n, 1000, ["FLOP", "kFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP", "EFLOP"])


def count(v: float) -> str:
    return js_int(v) if float(v).is_integer() else js_fixed(v, 2)


def value_text(f: dict[str, Any]) -> str:
    v, unit = f["value"], f["unit"]
    if unit == "bytes":
        return f"{js_int(v)} B" if v < 1024 else f"{js_int(v)} B ({js_bytes(v)})"
    if unit == "flop":
        return flop(v)
    if unit == "fraction":
        return js_pct(v)
    if unit == "tokens":
        return count(v)
    return js_int(v)


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def by_key(figures: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["key"]: f for f in figures}


def line(f: dict[str, Any]) -> str:
    return f"{f['label']}: {value_text(f)} = {f['formula']} [{f['source']}]"


def expected_readout(data: dict[str, Any]) -> str:
    ep, cp = data["expert_parallel"], data["context_parallel"]
    m = next(s for s in data["models"] if s["key"] == ep["model"])
    lines = [data["note"],
             f"expert parallelism: {ep['name']}, {m['num_experts']} experts "
             f"(top-{m['experts_per_token']}) in each of {m['num_layers']} layers, over "
             f"{plural(ep['ep'], 'rank')}, batch of {plural(ep['batch'], 'token')} per step"]
    lines += [f"  {line(f)}" for f in ep["figures"]]
    one = ep["one_device_bytes"]
    for r in ep["ranks"]:
        start, stop = r["experts"]
        span = f"expert {start}" if stop - start == 1 else f"experts {start}–{stop - 1}"
        total = r["expert_bytes"] + r["dense_bytes"]
        lines.append(f"  rank {r['rank']}: {span}, {js_bytes(r['expert_bytes'])} of experts + "
                     f"{js_bytes(r['dense_bytes'])} replicated = {js_bytes(total)} "
                     f"({js_pct(total / one)} of {js_bytes(one)} on one device)")
    lines.append(f"context parallelism: one sequence of {plural(cp['seq_len'], 'token')} over "
                 f"{plural(cp['cp'], 'rank')}")
    for model in cp["models"]:
        lines.append(f"  {model['name']} ({'the loaded model, ' if model['loaded'] else ''}"
                     f"{model['dtype']}):")
        lines += [f"    {line(f)}" for f in model["figures"]]
    return "\n".join(lines)


def check_figures(data: dict[str, Any], loaded_arch: Any) -> None:
    """The answer's key figures, recomputed here from the shapes it lists."""
    inputs = data["inputs"]
    ep_n, batch, cp_n, seq_len = inputs["ep"], inputs["batch"], inputs["cp"], inputs["seq_len"]
    m = next(s for s in data["models"] if s["key"] == inputs["model"])
    ep = by_key(data["expert_parallel"]["figures"])
    per_expert = 3 * m["hidden_size"] * m["expert_intermediate_size"]
    assert ep["params_per_expert"]["value"] == per_expert
    assert ep["expert_bytes_per_rank"]["value"] == (
        m["num_layers"] * m["num_experts"] // ep_n * per_expert * 2)
    k = m["experts_per_token"]
    assert ep["tokens_per_expert"]["value"] == pytest.approx(batch * k / m["num_experts"])
    a2a = 2 * batch * k * m["hidden_size"] * 2 * (ep_n - 1) / ep_n
    assert abs(ep["all_to_all_bytes_per_layer"]["value"] - a2a) <= 0.5
    assert "assumption: uniform routing" in ep["tokens_per_expert"]["source"]
    shapes = [(loaded_arch.num_layers, loaded_arch.num_kv_heads, loaded_arch.head_dim, 4)]
    shapes += [(s["num_layers"], s["num_kv_heads"], s["head_dim"], 2) for s in data["models"]]
    for model, (layers, kv_heads, head_dim, size) in zip(data["context_parallel"]["models"],
                                                          shapes, strict=True):
        f = by_key(model["figures"])
        bpt = 2 * layers * kv_heads * head_dim * size
        assert f["kv_bytes_per_token"]["value"] == bpt
        assert f["kv_bytes_per_rank"]["value"] == bpt * seq_len // cp_n
        assert f["ring_bytes_received_per_rank"]["value"] == bpt * seq_len * (cp_n - 1) // cp_n
        assert f["attention_flops_per_rank"]["value"] * cp_n == f["attention_flops"]["value"]
        assert all(x["source"].startswith("computed from") for x in model["figures"])


def is_math(response: Any) -> bool:
    return "/scope/api/parallel-math?" in response.url


def answer(page, act) -> dict[str, Any]:
    with page.expect_response(is_math) as info:
        act()
    assert info.value.ok, info.value.text()
    return info.value.json()


def test_lesson_computes_on_load_and_follows_the_keyboard(page, loaded_fp32):
    data = answer(page, lambda: page.goto(PAGE))
    assert data["inputs"] == {"model": "mixtral-8x7b", "ep": 8, "batch": 256, "cp": 4,
                              "seq_len": 131072}
    readout = page.locator("#readout")
    expect(readout).to_have_text(expected_readout(data))
    check_figures(data, loaded_fp32.arch)
    expect(page.locator("#ep-bars li")).to_have_count(8)
    expect(page.locator("#cp-table tbody tr")).to_have_count(4)
    expect(page.locator("#cp-table tbody tr").first.locator("th")).to_have_text(
        f"{data['context_parallel']['models'][0]['name']} (the loaded model, float32)")
    expect(page.locator("#ep")).to_have_attribute("aria-valuetext", "8 ranks")

    def key(selector: str, press: str) -> dict[str, Any]:
        page.locator(selector).focus()
        got = answer(page, lambda: page.keyboard.press(press))
        expect(readout).to_have_text(expected_readout(got))
        check_figures(got, loaded_fp32.arch)
        return got

    got = key("#ep", "ArrowLeft")
    assert got["inputs"]["ep"] == 4
    expect(page.locator("#ep-bars li")).to_have_count(4)
    expect(page.locator("#ep")).to_have_attribute("aria-valuetext", "4 ranks")
    got = key("#batch", "ArrowRight")
    assert got["inputs"]["batch"] == 512
    got = key("#seq-len", "End")
    assert got["inputs"]["seq_len"] == 1 << 20
    expect(page.locator("#seq-len")).to_have_attribute("aria-valuetext", "1,048,576 tokens (1M)")
    got = key("#cp", "Home")
    assert got["inputs"]["cp"] == 1
    ring = by_key(got["context_parallel"]["models"][1]["figures"])["ring_bytes_received_per_rank"]
    assert ring["value"] == 0  # one rank holds everything
    got = key("#cp", "ArrowRight")
    assert got["inputs"]["cp"] == 2

    # another model from the keyboard: Qwen's 60 experts split over 1-6 ranks
    got = key("#ep-model", "ArrowDown")
    assert got["inputs"]["model"] == "qwen1.5-moe-a2.7b" and got["inputs"]["ep"] == 4
    expect(page.locator("#ep")).to_have_attribute("max", "5")
    got = key("#ep", "End")
    assert got["inputs"]["ep"] == 6
    per_layer = by_key(got["expert_parallel"]["figures"])["all_to_all_bytes_per_layer"]
    assert per_layer["value"] == round(2 * 512 * 4 * 2048 * 2 * 5 / 6)  # 6,990,506.67 rounded
    assert by_key(got["expert_parallel"]["figures"])["tokens_per_expert"]["value"] == (
        pytest.approx(512 * 4 / 60))
    expect(page.locator("#ep-bars li")).to_have_count(6)
    screenshot(page, "expert-context-parallelism")


def test_lesson_fits_a_narrow_screen(open_page):
    page = open_page(width=375)
    data = answer(page, lambda: page.goto(PAGE))
    expect(page.locator("#readout")).to_have_text(expected_readout(data))
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
