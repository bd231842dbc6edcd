"""Expert and context parallelism computed from published MoE shapes (scope/parallel_math.py):
Mixtral-8x7B's figures worked out by hand, the published totals of all three models,
load-balanced causal chunking, and GET /scope/api/parallel-math with its 400s."""

from __future__ import annotations

import httpx
import pytest

from kvscope.scope import parallel_math as pm
from tests.server_harness import MODEL_NAME, running_server

MIXTRAL = pm.MODELS_BY_KEY["mixtral-8x7b"]
QWEN = pm.MODELS_BY_KEY["qwen1.5-moe-a2.7b"]
OLMOE = pm.MODELS_BY_KEY["olmoe-1b-7b"]


def values(result: dict) -> dict:
    return {f["key"]: f["value"] for f in result["figures"]}


def sources(result: dict) -> dict:
    return {f["key"]: f["source"] for f in result["figures"]}


def test_mixtral_parameters_by_hand():
    per_expert = 3 * 4096 * 14336
    assert per_expert == 176_160_768
    assert pm.params_per_expert(MIXTRAL) == per_expert
    assert pm.expert_params(MIXTRAL) == 32 * 8 * per_expert == 45_097_156_608
    # q and o 4096 × 4096, k and v 4096 × (8 × 128), in 32 layers
    attention = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024)
    assert pm.attention_params(MIXTRAL) == attention == 1_342_177_280
    router, embeddings = 32 * 4096 * 8, 2 * 32000 * 4096
    assert pm.dense_params(MIXTRAL) == attention + router + embeddings == 1_605_369_856
    assert pm.active_params(MIXTRAL) == 32 * 2 * per_expert + 1_605_369_856 == 12_879_659_008


@pytest.mark.parametrize("model, total_b, active_b", [
    (MIXTRAL, 46.7, 12.9), (QWEN, 14.3, 2.7), (OLMOE, 6.9, 1.3)])
def test_totals_match_the_published_parameter_counts(model, total_b, active_b):
    total = pm.expert_params(model) + pm.dense_params(model)
    assert round(total / 1e9, 1) == total_b
    assert round(pm.active_params(model) / 1e9, 1) == active_b


def test_ep_sizes_divide_the_experts():
    assert MIXTRAL.ep_sizes == [1, 2, 4, 8]
    assert QWEN.ep_sizes == [1, 2, 3, 4, 5, 6]
    assert OLMOE.ep_sizes == [1, 2, 4, 8]
    with pytest.raises(ValueError, match="one of 1, 2, 4, 8"):
        pm.expert_parallel(MIXTRAL, 3, 256)


def test_mixtral_expert_parallel_over_8_ranks_by_hand():
    result = pm.expert_parallel(MIXTRAL, 8, 256)
    v = values(result)
    assert v["experts_per_rank"] == 1
    assert v["expert_bytes_per_rank"] == 32 * 1 * 176_160_768 * 2 == 11_274_289_152
    assert v["dense_bytes_per_rank"] == 1_605_369_856 * 2
    assert v["weight_bytes_per_rank"] == 11_274_289_152 + 3_210_739_712
    assert v["tokens_per_expert"] == 256 * 2 // 8 == 64
    assert v["tokens_per_rank"] == 64
    # each token's 4096-wide bf16 vector to its 2 experts and back; 7 of 8 experts are elsewhere
    assert v["all_to_all_bytes_per_layer"] == 2 * 256 * 2 * 4096 * 2 * 7 // 8 == 7_340_032
    assert v["all_to_all_bytes_per_step"] == 32 * 7_340_032
    assert result["one_device_bytes"] == (45_097_156_608 + 1_605_369_856) * 2
    assert [r["experts"] for r in result["ranks"]] == [[r, r + 1] for r in range(8)]
    src = sources(result)
    assert all(s.startswith("computed from the published config.json") for s in src.values())
    assert "assumption: uniform routing" in src["tokens_per_expert"]
    assert "assumption: uniform routing" in src["all_to_all_bytes_per_layer"]
    assert "replicated" in src["dense_bytes_per_rank"]


def test_expert_parallel_edge_cases():
    one = values(pm.expert_parallel(MIXTRAL, 1, 1))
    assert one["all_to_all_bytes_per_layer"] == 0  # every expert is local
    assert one["tokens_per_expert"] == 0.25  # an expectation, not a whole token
    assert one["expert_bytes_per_rank"] == 45_097_156_608 * 2
    four = values(pm.expert_parallel(MIXTRAL, 4, 1))
    assert four["experts_per_rank"] == 2 and four["tokens_per_rank"] == 0.5
    # Qwen over 3 ranks: 2 × 1 × 4 × 2048 × 2 × 2/3 = 21845.33…, rounded to whole bytes
    qwen = pm.expert_parallel(QWEN, 3, 1)
    assert values(qwen)["all_to_all_bytes_per_layer"] == 21845
    assert values(qwen)["experts_per_rank"] == 20
    assert pm.shared_expert_params(QWEN) == 24 * 3 * 2048 * 5632
    assert "5,632 shared expert" in next(f["formula"] for f in qwen["figures"]
                                         if f["key"] == "dense_params")


def test_mixtral_context_parallel_by_hand():
    result = pm.moe_context_parallel(MIXTRAL, 4, 131072)
    v = values(result)
    assert v["kv_bytes_per_token"] == 2 * 32 * 8 * 128 * 2 == 131072
    assert v["tokens_per_rank"] == 32768
    assert v["kv_bytes_sequence"] == 131072 * 131072 == 16 * 2**30
    assert v["kv_bytes_per_rank"] == 4 * 2**30
    assert v["ring_bytes_received_per_rank"] == 12 * 2**30  # the other 3 ranks' quarters
    total = 2 * 2 * (131072 * 131073 // 2) * 32 * 128 * 32
    assert v["attention_flops"] == total
    assert v["attention_flops_per_rank"] * 4 == total
    # the brief's L²/2 estimate differs from the exact causal count by one part in L
    estimate = 2 * 2 * 131072 * 131072 / 2 * 32 * 128 * 32
    assert abs(total - estimate) / estimate == pytest.approx(1 / 131072)
    last = 131072 - 32768
    assert v["attention_flops_busiest_contiguous"] == (
        2 * 2 * ((131072 * 131073 - last * (last + 1)) // 2) * 32 * 128 * 32)
    assert v["attention_flops_busiest_contiguous"] > 1.7 * v["attention_flops_per_rank"]


@pytest.mark.parametrize("cp", [1, 2, 3, 4, 8])
def test_load_balanced_chunks_give_every_rank_the_same_work(cp):
    seq_len = 4096 * 3
    pairs = [pm.balanced_pairs(cp, seq_len, r) for r in range(cp)]
    assert len(set(pairs)) == 1
    assert sum(pairs) == pm.causal_pairs(0, seq_len) == seq_len * (seq_len + 1) // 2


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="multiple of 2 × cp = 8"):
        pm.check_cp(4, 4100)
    with pytest.raises(ValueError, match="cp must be"):
        pm.check_cp(9, 4096)


# -- over HTTP ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(loaded_fp32):
    with running_server(loaded_fp32) as running:
        yield running


def get(server, **params):
    return httpx.get(server.url + "/scope/api/parallel-math", params=params, timeout=30)


def test_endpoint_answers_with_every_figure_labelled(server, loaded_fp32):
    r = get(server, model="mixtral-8x7b", ep=4, batch=512, cp=2, seq_len=8192)
    assert r.status_code == 200
    data = r.json()
    assert data["inputs"] == {"model": "mixtral-8x7b", "ep": 4, "batch": 512, "cp": 2,
                              "seq_len": 8192}
    assert "computed, not run" in data["note"]
    assert [m["key"] for m in data["models"]] == ["mixtral-8x7b", "qwen1.5-moe-a2.7b",
                                                  "olmoe-1b-7b"]
    assert data["models"][0]["ep_sizes"] == [1, 2, 4, 8]
    ep = values(data["expert_parallel"])
    assert ep["expert_bytes_per_rank"] == 32 * 2 * 176_160_768 * 2
    assert ep["all_to_all_bytes_per_layer"] == 2 * 512 * 2 * 4096 * 2 * 3 // 4
    loaded, *moe = data["context_parallel"]["models"]
    assert loaded["name"] == MODEL_NAME and loaded["loaded"] and loaded["dtype"] == "float32"
    arch = loaded_fp32.arch
    bpt = 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * 4
    assert bpt == 2 * 30 * 3 * 64 * 4  # SmolLM2-135M in float32
    lv = values(loaded)
    assert lv["kv_bytes_per_token"] == bpt
    assert lv["kv_bytes_per_rank"] == bpt * 8192 // 2
    assert lv["ring_bytes_received_per_rank"] == bpt * 4096
    assert lv["attention_flops"] == 2 * 2 * (8192 * 8193 // 2) * 9 * 64 * 30
    assert all(s.startswith("computed from the loaded model's config")
               for k, s in sources(loaded).items() if k != "tokens_per_rank")
    assert [m["name"] for m in moe] == [m.name for m in pm.MOE_MODELS]
    for m in moe:
        assert all("computed from" in f["source"] for f in m["figures"])
    for figure in data["expert_parallel"]["figures"]:
        assert figure["source"].startswith("computed from the published config.json")


def test_endpoint_defaults(server):
    r = get(server)
    assert r.status_code == 200
    assert r.json()["inputs"] == {"model": "mixtral-8x7b", "ep": 8, "batch": 256, "cp": 4,
                                  "seq_len": 131072}


@pytest.mark.parametrize("params, text", [
    ({"ep": 3}, "one of 1, 2, 4, 8"),
    ({"model": "qwen1.5-moe-a2.7b", "ep": 8}, "one of 1, 2, 3, 4, 5, 6"),
    ({"ep": 9}, "ep"),
    ({"ep": "two"}, "ep"),
    ({"model": "gpt-4"}, "model must be one of"),
    ({"cp": 0}, "cp"),
    ({"cp": 4, "seq_len": 4100}, "multiple of 2 × cp = 8"),
    ({"seq_len": (1 << 20) + 2}, "seq_len"),
    ({"batch": 0}, "batch"),
    ({"batch": 65537}, "batch"),
])
def test_endpoint_rejects_bad_inputs_with_400(server, params, text):
    r = get(server, **params)
    assert r.status_code == 400, r.text
    assert text in r.json()["error"]["message"]
