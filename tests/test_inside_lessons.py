"""The lessons on the model's insides (scope/inside/), called directly and over HTTP:
each answer is checked against an independent computation on the same weights, the
sampling lesson against real seeded generate() calls, and bad input gets a 400 with
an OpenAI-style body."""

from __future__ import annotations

import math
from itertools import pairwise

import httpx
import pytest
import torch

from kvscope import SamplingParams
from kvscope.model.loader import LoadedModel
from kvscope.model.tokenizer import apply_chat_template
from kvscope.scope.inside.attention import AttentionHeadRequest, attention_lesson
from kvscope.scope.inside.block import BlockRequest, block_lesson
from kvscope.scope.inside.common import probed_prefill
from kvscope.scope.inside.embeddings import EmbeddingsRequest, embeddings_lesson
from kvscope.scope.inside.phases import PhasesRequest, phases_lesson
from kvscope.scope.inside.recompute import RecomputeRequest, recompute_lesson
from kvscope.scope.inside.rope import RopeRequest, rope_lesson
from kvscope.scope.inside.sampling import SamplingLessonRequest, sampling_lesson
from kvscope.scope.inside.tokens import TokensRequest, tokens_lesson
from kvscope.scope.lab_limits import LabBudget, LabLimits, LabStopped
from tests.server_harness import running_server

PROMPT = "The capital of France is"
NUM_SEEDS = 80


def close(a: float, b: float, rel: float = 1e-5) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-6)


# -- tokens and embeddings ------------------------------------------------------------


def test_tokens_spell_the_text_byte_for_byte_and_cost_their_kv(loaded_fp32: LoadedModel) -> None:
    text = "Naïve café: 3×4 = 12 🙂"
    result = tokens_lesson(loaded_fp32, TokensRequest(text=text))
    ids = [t["id"] for t in result["tokens"]]
    assert ids == list(loaded_fp32.tokenizer.encode(text))
    assert b"".join(bytes(t["bytes"]) for t in result["tokens"]).decode() == text
    arch = loaded_fp32.arch
    per_token = 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * 4
    assert result["kv"]["kv_bytes_per_token"] == per_token == 46080
    assert result["kv"]["kv_bytes"] == per_token * len(ids)
    assert (result["num_chars"], result["num_bytes"]) == (len(text), len(text.encode()))
    assert result["num_special"] == 0 and result["template"] is None


def test_a_chat_message_goes_through_the_models_template(loaded_fp32: LoadedModel) -> None:
    result = tokens_lesson(loaded_fp32, TokensRequest(text="Hi!", chat=True, system="Be brief."))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    ids = apply_chat_template(loaded_fp32.tokenizer, messages)
    assert [t["id"] for t in result["tokens"]] == ids
    specials = [t["text"] for t in result["tokens"] if t["special"]]
    assert specials == ["<|im_start|>", "<|im_end|>"] * 2 + ["<|im_start|>"]
    assert result["num_special"] == 5
    assert result["rendered"].endswith("<|im_start|>assistant\n")
    assert result["template"] == loaded_fp32.tokenizer.chat_template


def test_embedding_rows_and_neighbours_are_the_matrixs(loaded_fp32: LoadedModel) -> None:
    result = embeddings_lesson(loaded_fp32, EmbeddingsRequest(text=PROMPT, dim_start=100,
                                                              dim_count=8, neighbours=3))
    table = loaded_fp32.model.embed_tokens.weight.float()
    unit = table / table.norm(dim=1, keepdim=True)
    for row in result["rows"]:
        vector = table[row["id"]]
        assert row["slice"] == pytest.approx(vector[100:108].tolist(), rel=1e-5, abs=1e-7)
        assert close(row["norm"], vector.norm().item())
        cosine = unit @ unit[row["id"]]
        cosine[row["id"]] = -2
        assert [n["id"] for n in row["neighbours"]] == cosine.topk(3).indices.tolist()
    assert result["rows"][3]["text"] == " France"


# -- attention, RoPE, the block -------------------------------------------------------------


def test_attention_lesson_is_the_probes_matrix_with_its_gqa_group(loaded_fp32) -> None:
    result = attention_lesson(loaded_fp32, AttentionHeadRequest(prompt=PROMPT, layer=7, head=5))
    run = probed_prefill(loaded_fp32, result["token_ids"], layers={7})
    run.engine.shutdown()
    probs = run.capture.layer(7)["attention_probs"][5]
    for i, row in enumerate(result["probs"]):
        assert len(row) == i + 1 and close(sum(row), 1.0, 1e-5)
        assert row == pytest.approx(probs[i, :i + 1].tolist(), rel=1e-5, abs=1e-7)
        assert result["row_max"][i]["key"] == int(probs[i].argmax())
    assert (result["kv_head"], result["group"]) == (1, [3, 4, 5])
    assert result["kv"] == {"kv_bytes_per_token": 46080,
                            "kv_bytes_per_token_without_gqa": 138240, "ratio": 3.0}


def test_rope_scores_depend_on_distance_only(loaded_fp32: LoadedModel) -> None:
    result = rope_lesson(loaded_fp32, RopeRequest(prompt=PROMPT, layer=4, head=2,
                                                  query_position=-1, key_position=1,
                                                  max_distance=16))
    assert (result["query_position"], result["key_position"], result["distance"]) == (4, 1, 3)
    scores = [s["score"] for s in result["scores"]]
    assert [s["distance"] for s in result["scores"]] == list(range(17))
    # the real run's post-RoPE score equals rotating the pre-RoPE vectors by 3 positions
    assert close(result["score_in_run"], result["score_at_distance"], 1e-4)
    assert close(scores[3], result["score_at_distance"], 1e-4)
    assert close(scores[0], result["score_without_rope"], 1e-4)  # same angle: no change
    theta, dim = loaded_fp32.arch.rope_theta, loaded_fp32.arch.head_dim
    pair = result["pairs"][5]
    assert close(pair["inv_freq"], theta ** (-10 / dim))
    assert close(pair["wavelength"], 2 * math.pi * theta ** (10 / dim))
    p = result["angle_positions"].index(64)
    assert close(result["angles"][p][5], math.fmod(64 * theta ** (-10 / dim), 2 * math.pi))


def test_block_norms_chain_from_layer_to_layer(loaded_fp32: LoadedModel) -> None:
    result = block_lesson(loaded_fp32, BlockRequest(prompt=PROMPT, layer=6, top_neurons=4))
    layers = result["layers"]
    assert len(layers) == 30 and result["position"] == 4
    assert [p["name"] for p in result["path"]] == [
        "residual in", "input RMSNorm", "attention output", "residual after attention",
        "post-attention RMSNorm", "MLP output", "residual out"]
    assert [p["norm"] for p in result["path"]] == [layers[6][k] for k in (
        "residual_in", "input_norm", "attention_output", "residual_mid",
        "post_attention_norm", "mlp_output", "residual_out")]
    for before, after in pairwise(layers):
        assert close(before["residual_out"], after["residual_in"])
    assert close(layers[0]["residual_in"], result["embedding_norm"])
    activations = [abs(n["activation"]) for n in result["mlp_top"]]
    assert activations == sorted(activations, reverse=True)
    for n in result["mlp_top"]:
        silu = n["gate"] / (1 + math.exp(-n["gate"]))
        assert close(silu * n["up"], n["activation"], 1e-4)


# -- logits and sampling --------------------------------------------------------------------


def _filter_by_hand(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                    min_p: float) -> set[int]:
    """Top-k, then top-p (keep while the mass before a token is within top_p), then
    min-p (relative to the most likely), written out independently of the sampler."""
    probs = torch.softmax(logits.double() / temperature, -1)
    order = probs.argsort(descending=True).tolist()[:top_k or None]
    kept_probs = torch.softmax(logits.double()[order] / temperature, -1).tolist()
    kept, mass = [], 0.0
    for token, p in zip(order, kept_probs, strict=True):
        if mass > top_p:
            break
        kept.append((token, p))
        mass += p
    return {t for t, p in kept if p >= min_p * kept[0][1]}


@pytest.mark.parametrize(("temperature", "top_k", "top_p", "min_p"), [
    (1.0, 4, 1.0, 0.0), (0.7, 0, 0.9, 0.0), (1.3, 20, 0.95, 0.05), (1.0, 0, 1.0, 0.2)])
def test_sampling_survivors_are_what_generate_can_draw(make_llm, loaded_fp32, temperature,
                                                      top_k, top_p, min_p) -> None:
    body = SamplingLessonRequest(prompt=PROMPT, temperature=temperature, top_k=top_k,
                                 top_p=top_p, min_p=min_p, seed=11, show=50)
    result = sampling_lesson(loaded_fp32, body)
    survivors = set(result["survivor_ids"])
    run = probed_prefill(loaded_fp32, result["token_ids"], layers=set())
    run.engine.shutdown()
    assert survivors == _filter_by_hand(run.capture.logits, temperature, top_k, top_p, min_p)
    assert result["num_survivors"] == len(survivors)
    finals = [c["prob_final"] for c in result["candidates"] if c["survives"]]
    assert close(sum(finals), 1.0, 1e-4) or len(survivors) > 50
    llm = make_llm()
    params = [SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                             seed=seed, max_tokens=1, ignore_eos=True)
              for seed in range(NUM_SEEDS)]
    drawn = [o.outputs[0].token_ids[0] for o in llm.generate([PROMPT] * NUM_SEEDS, params)]
    assert set(drawn) <= survivors
    likely = {c["id"] for c in result["candidates"] if c["prob_final"] >= 0.05}
    assert likely <= set(drawn)  # (80 draws miss a 5% token with probability 1.7%)
    same_seed = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                               seed=11, max_tokens=1, ignore_eos=True)
    assert result["drawn"]["id"] == llm.generate(PROMPT, same_seed)[0].outputs[0].token_ids[0]


def test_temperature_zero_keeps_only_the_argmax(loaded_fp32: LoadedModel) -> None:
    result = sampling_lesson(loaded_fp32, SamplingLessonRequest(prompt=PROMPT, temperature=0,
                                                                show=3))
    assert result["survivor_ids"] == [result["greedy"]["id"]] == [result["drawn"]["id"]]
    assert result["greedy"]["text"] == " Paris"
    assert [c["prob_final"] for c in result["candidates"]] == [1.0, 0.0, 0.0]


# -- phases and recomputation -----------------------------------------------------------------


def test_phases_label_one_prefill_then_decodes_and_count_flops(loaded_fp32) -> None:
    result = phases_lesson(loaded_fp32, PhasesRequest(prompt=PROMPT * 4, max_tokens=4))
    steps, n = result["steps"], result["prompt_tokens"]
    assert [(s["phase"], s["num_tokens"], s["context_len"]) for s in steps] == [
        ("prefill", n, n)] + [("decode", 1, n + i) for i in range(1, 4)]
    arch, params = loaded_fp32.arch, result["model"]["params"]
    head = arch.vocab_size * arch.hidden_size
    for s in steps:
        start = s["context_len"] - s["num_tokens"]
        keys = sum(p + 1 for p in range(start, s["context_len"]))
        attention = 4 * arch.num_heads * arch.head_dim * arch.num_layers * keys
        assert s["flops"] == 2 * (params - head) * s["num_tokens"] + 2 * head + attention
        assert close(s["intensity"], s["flops"] / s["bytes"])
    assert steps[0]["intensity"] > 10 * steps[1]["intensity"]  # prefill: far more work a byte
    machine = result["machine"]
    assert machine["measured"] and machine["peak_gflops"] > 0 and machine["bandwidth_gbs"] > 0
    assert result["gpu"]["measured"] is False and "not measured" in result["gpu"]["source"]


def test_recomputing_gives_the_same_tokens_for_far_more_work(loaded_fp32) -> None:
    result = recompute_lesson(loaded_fp32, RecomputeRequest(prompt=PROMPT, max_tokens=5))
    n = result["prompt_tokens"]
    assert result["identical"] is True
    assert [r["tokens_computed"] for r in result["cached"]] == [n, 1, 1, 1, 1]
    assert [r["tokens_computed"] for r in result["recompute"]] == [n + i for i in range(5)]
    assert [r["context_len"] for r in result["recompute"]] == [n + i for i in range(5)]
    assert result["totals"]["recompute_tokens_computed"] == 5 * n + 10


# -- over HTTP ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(loaded_fp32):
    with running_server(loaded_fp32) as running:
        yield running


@pytest.mark.parametrize(("path", "body", "message"), [
    ("attention", {"prompt": PROMPT, "layer": 30}, "layer must be an integer in [0, 30)"),
    ("attention", {"prompt": PROMPT, "head": 9}, "head must be an integer in [0, 9)"),
    ("rope", {"prompt": PROMPT, "query_position": 1, "key_position": 3},
     "key_position (3) must not come after query_position (1)"),
    ("block", {"prompt": "word " * 129}, "at most 128 allowed"),
    ("embeddings", {"text": PROMPT, "dim_start": 570, "dim_count": 8},
     "dim_start + dim_count must be at most the hidden size 576"),
    ("sampling", {"prompt": PROMPT, "top_k": 50000}, "top_k must be at most"),
    ("tokens", {"text": "hi", "system": "x"}, "system applies to chat messages only"),
    ("tokens", {"text": "hi", "extra": 1}, "unrecognized request argument supplied: extra"),
])
def test_bad_input_gets_a_400_and_the_server_keeps_serving(server, path, body, message) -> None:
    response = httpx.post(f"{server.url}/scope/api/inside/{path}", json=body, timeout=60)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
    ok = httpx.post(f"{server.url}/scope/api/inside/tokens", json={"text": "still here"})
    assert ok.status_code == 200 and ok.json()["num_tokens"] == 2


def test_the_roofline_is_measured_once_then_kept(server) -> None:
    first = httpx.get(f"{server.url}/scope/api/inside/roofline", timeout=60).json()
    again = httpx.get(f"{server.url}/scope/api/inside/roofline", timeout=60).json()
    assert first == again and first["measured"] is True
    assert first["ridge"] == pytest.approx(first["peak_gflops"] / first["bandwidth_gbs"],
                                           rel=1e-4)
    fresh = httpx.get(f"{server.url}/scope/api/inside/roofline?measure=true", timeout=60)
    assert fresh.status_code == 200 and fresh.json()["method"] == first["method"]


def test_an_inside_run_is_held_to_the_lesson_budget(loaded_fp32: LoadedModel) -> None:
    """Recomputing every token costs tokens fast: the lab's token cap stops it."""
    budget = LabBudget(LabLimits(max_tokens=40))
    with pytest.raises(LabStopped) as stopped:
        recompute_lesson(loaded_fp32, RecomputeRequest(prompt=PROMPT, max_tokens=12), budget)
    assert stopped.value.reason == "token_cap"
    assert stopped.value.num_free_blocks == stopped.value.num_blocks
