"""The CUDA graphs lesson's backend (POST /scope/api/lab/launch-overhead) on the real
bundled model: the same decode workload through the Python layer loop and through the
decode stack gives the same greedy tokens in the same number of steps, every decode
step of the stack run went through the stack in one call, the timings are positive, the
kernel calls were counted on the run, and the serving model is left as it was. Bodies
out of bounds are refused with an OpenAI-style 400; GET /scope/api/machine-memory
answers this machine's caches and the loaded model's sizes."""

from __future__ import annotations

import httpx
import pytest

from kvscope.kernels.build import cpu_kernels
from tests.server_harness import MODEL_NAME, running_server

pytestmark = pytest.mark.skipif(cpu_kernels() is None,
                                reason="C++ kernels could not be built here")

PATH = "/scope/api/lab/launch-overhead"


@pytest.fixture(scope="module")
def server(loaded_fp32):
    with running_server(loaded_fp32) as srv:
        yield srv


def test_loop_and_stack_give_the_same_tokens_in_the_same_steps(server, loaded_fp32):
    model = loaded_fp32.model
    before = (model._decode_stack, model._decode_stack_built)
    r = httpx.post(server.url + PATH, json={"batch_size": 3, "steps": 10}, timeout=120)
    assert r.status_code == 200, r.text
    run = r.json()
    loop, stack = run["loop"], run["stack"]
    assert run["same_tokens"] is True
    assert loop["token_ids"] == stack["token_ids"]
    assert [len(t) for t in loop["token_ids"]] == [10] * 3
    assert stack["num_steps"] == loop["num_steps"] == 10  # one prefill step, nine decodes
    assert stack["num_decode_steps"] == loop["num_decode_steps"] == 9
    # every decode-only step of the stack run made one stack call; the loop none
    assert stack["stack_runs"] == 9 and loop["stack_runs"] == 0
    layers = loaded_fp32.arch.num_layers
    for mode in (loop, stack):
        for step in mode["steps"]:
            assert step["wall_ms"] > 0 and step["forward_ms"] > 0 and step["prepare_ms"] > 0
            assert step["schedule_ms"] >= 0 and step["sample_update_ms"] >= 0
            assert step["wall_ms"] >= step["forward_ms"] + step["prepare_ms"]
    # counted: the loop calls kernels layer by layer, the stack once for all layers
    # (plus the final norm and the LM head, the same both ways)
    loop_calls = {s["kernel_calls"] for s in loop["steps"] if s["decode_only"]}
    stack_calls = {s["kernel_calls"] for s in stack["steps"] if s["decode_only"]}
    assert stack_calls == {3}
    [per_step] = loop_calls
    assert per_step - 2 == run["calls_per_layer"] * layers and run["calls_per_layer"] >= 8
    removed = loop["median"]["wall_ms"] - stack["median"]["wall_ms"]
    assert run["removed_ms"] == pytest.approx(removed, abs=1e-3)
    assert run["removed_share"] == pytest.approx(removed / loop["median"]["wall_ms"], abs=1e-4)
    gpu = run["projection"]
    assert gpu["measured"] is False and gpu["eager_launches"] == per_step
    assert gpu["eager_launch_us"] == pytest.approx(per_step * gpu["launch_us"])
    assert 0 < gpu["removed_share"] < 1 and gpu["assumptions"]
    # the serving engine's model is as it was, and still serves
    assert (model._decode_stack, model._decode_stack_built) == before
    done = httpx.post(server.url + "/v1/completions", json={
        "model": MODEL_NAME, "prompt": "Hello", "max_tokens": 2}, timeout=60)
    assert done.status_code == 200


@pytest.mark.parametrize("body", [{"batch_size": 0}, {"batch_size": 9}, {"steps": 7},
                                  {"steps": 65}, {"batch_size": 2, "extra": 1}])
def test_out_of_bounds_bodies_get_an_openai_style_400(server, body):
    r = httpx.post(server.url + PATH, json=body, timeout=30)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_machine_memory_reads_the_caches_and_the_model(server, loaded_fp32):
    info = httpx.get(server.url + "/scope/api/machine-memory", timeout=30).json()
    arch = loaded_fp32.arch
    assert info["model"]["num_parameters"] == arch.num_parameters()
    assert info["model"]["kv_bytes_per_token"] == 2 * arch.num_layers * arch.num_kv_heads \
        * arch.head_dim * 4
    assert info["model"]["kv_bytes_per_token_bf16"] == info["model"]["kv_bytes_per_token"] // 2
    assert info["memory_bytes"] is None or info["memory_bytes"] > 1 << 20
    for cache in info["caches"]:
        assert cache["level"] >= 1 and cache["size_bytes"] > 0
