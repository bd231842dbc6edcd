"""The GPU memory hierarchy and CUDA graphs lessons in a real browser against a real
server: the memory page's sizes at a context length and batch chosen with the keyboard
equal those computed here from Llama-3-70B's published config and from the loaded
model's (/scope/api/info and /scope/api/machine-memory); the CUDA graphs page's readout
and table carry the launch-overhead run's figures as the API answered them."""

from __future__ import annotations

import httpx
import pytest

from tests.browser.scope_fold import js_fixed, js_pct

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

CONTEXTS = [256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]
LLAMA_70B = {"num_layers": 80, "hidden_size": 8192, "intermediate_size": 28672, "num_heads": 64,
             "num_kv_heads": 8, "head_dim": 128, "vocab_size": 128256, "tied": False}


def num_parameters(m: dict) -> int:
    h, i, d = m["hidden_size"], m["intermediate_size"], m["head_dim"]
    per_layer = h * m["num_heads"] * d * 2 + h * m["num_kv_heads"] * d * 2 + 3 * h * i + 2 * h
    head = 0 if m["tied"] else m["vocab_size"] * h
    return m["vocab_size"] * h + m["num_layers"] * per_layer + h + head


def gb(n: float) -> str:
    return f"{js_fixed(n / 1e9, 1 if n >= 10e9 else 3)} GB"


def test_memory_page_sizes_follow_the_sliders(page, scope_server):
    page.emulate_media(reduced_motion="reduce")
    page.goto("/lessons/gpu-memory.html")
    readout = page.locator("#readout")
    expect(readout).to_contain_text("Measured bandwidth here")
    expect(page.locator("#levels tbody tr")).to_have_count(6)
    expect(page.locator("#levels")).to_contain_text("published specification, not measured")
    # the keyboard moves the sliders: context 8192 -> 16384, batch 1 -> 4
    page.locator("#context").focus()
    page.keyboard.press("ArrowRight")
    page.locator("#batch").focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    expect(page.locator("#context-value")).to_have_text("16384")
    expect(page.locator("#batch-value")).to_have_text("4")
    context, batch = 16384, 4
    # Llama-3-70B: 141.1 GB of bf16 weights, 320 KiB of KV per token -> 4 H100s
    params = num_parameters(LLAMA_70B)
    kv_token = 2 * 80 * 8 * 128 * 2
    kv = kv_token * context * batch
    total = params * 2 + kv
    gpus = 1
    while gpus * 80e9 < total:
        gpus *= 2
    assert (gb(params * 2), gpus) == ("141.1 GB", 4)
    expect(readout).to_contain_text(
        f"Llama-3-70B (computed): {js_fixed(params / 1e9, 2)}B parameters, bf16 weights = "
        f"{gb(params * 2)}; KV cache at {context} tokens × {batch} = {gb(kv)} ({kv_token} bytes "
        f"per token); weights + KV = {gb(total)}: do not fit one 80 GB H100 → {gpus} GPUs by "
        "tensor parallelism.")
    # the bundled model, from the server's own description of it
    info = httpx.get(f"{scope_server.url}/scope/api/info").json()["engine"]
    memory = httpx.get(f"{scope_server.url}/scope/api/machine-memory").json()
    model = memory["model"]
    assert model["num_layers"] == info["num_layers"]
    assert model["kv_bytes_per_token"] == info["kv_bytes_per_token"]
    small_kv_token = info["kv_bytes_per_token"] // 4 * 2  # fp32 served, bf16 on the GPU
    small_kv = small_kv_token * context * batch
    expect(readout).to_contain_text(
        f"{model['name']} (computed): {js_fixed(model['num_parameters'] / 1e9, 2)}B parameters, "
        f"bf16 weights = {gb(model['num_parameters'] * 2)}; KV cache at {context} tokens × "
        f"{batch} = {gb(small_kv)} ({small_kv_token} bytes per token)")
    expect(page.locator("#sizes tbody tr")).to_have_count(2)
    expect(page.locator("#sizes tbody tr").nth(1).locator("td").last).to_have_text(str(gpus))
    expect(page.locator("#caches tbody tr")).to_have_count(len(memory["caches"]) + 1)
    assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]


def test_cuda_graphs_run_shows_the_apis_figures(page):
    page.goto("/lessons/cuda-graphs.html")
    expect(page.locator("#readout")).to_have_text("No run yet.")
    page.locator("#batch-size").fill("2")
    page.locator("#steps").fill("8")
    with page.expect_response(lambda r: r.url.endswith("/scope/api/lab/launch-overhead")
                              and r.request.method == "POST") as answer:
        page.locator("#run").focus()
        page.keyboard.press("Enter")
    run = answer.value.json()
    assert answer.value.request.post_data_json == {"batch_size": 2, "steps": 8}
    readout = page.locator("#readout")
    expect(readout).not_to_have_text("No run yet.")
    lm, sm, g = run["loop"]["median"], run["stack"]["median"], run["projection"]
    assert run["same_tokens"] is True
    for name, m in (("Python layer loop", lm), ("Decode stack", sm)):
        expect(readout).to_contain_text(
            f"{name} (measured): median decode step {js_fixed(m['wall_ms'], 2)} ms: schedule "
            f"{js_fixed(m['schedule_ms'], 2)}, prepare {js_fixed(m['prepare_ms'], 2)}, forward "
            f"{js_fixed(m['forward_ms'], 2)}, sample + update "
            f"{js_fixed(m['sample_update_ms'], 2)} ms; {m['kernel_calls']} kernel calls")
    if run["removed_ms"] >= 0:
        expect(readout).to_contain_text(f"removed {js_fixed(run['removed_ms'], 2)} ms, "
                                        f"{js_pct(run['removed_share'])} of the loop's step")
    else:
        expect(readout).to_contain_text(f"added {js_fixed(-run['removed_ms'], 2)} ms")
    expect(readout).to_contain_text("Same greedy tokens both ways: yes.")
    expect(readout).to_contain_text(
        f"Computed, not measured ({g['gpu']}): {g['eager_launches']} launches × 5 µs = "
        f"{js_fixed(g['eager_launch_us'], 1)} µs")
    expect(readout).to_contain_text(f"removing {js_pct(g['removed_share'])} of it.")
    rows = page.locator("#figures tbody tr")
    expect(rows.nth(1)).to_have_text(
        f"median wall time (ms){js_fixed(lm['wall_ms'], 2)}{js_fixed(sm['wall_ms'], 2)}")
    expect(rows.last).to_have_text(
        f"kernel calls from Python per step{lm['kernel_calls']}{sm['kernel_calls']}")
    decodes = run["loop"]["num_decode_steps"]
    expect(page.locator(".cg-bars").first.locator("li")).to_have_count(decodes)
    expect(page.locator(".cg-bars").last.locator("li")).to_have_count(run["stack"]["num_decode_steps"])
    expect(page.locator("#assumptions li")).to_have_count(len(g["assumptions"]))
