"""The block-wise attention lesson's numbers: real q from the engine's probe, real K/V
from the paged pool, and three ways of doing the math that must agree."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest
import torch

import kvscope.scope.inside.common as inside_common
from kvscope.config import EngineConfig
from kvscope.engine.llm_engine import LLMEngine
from kvscope.model.loader import LoadedModel
from kvscope.model.probe import LAYER_POINTS, ForwardProbe
from kvscope.sampling_params import SamplingParams
from kvscope.scope.attention_math import MAX_PROMPT_TOKENS, block_attention_math
from tests.conftest import SMALL_KV

PROMPT = ("The paged KV cache keeps each request's keys and values in fixed-size blocks, "
          "found through a block table, so memory is never reserved in advance.")
TOL = 1e-5


class _RecordingEngine(LLMEngine):
    """Notes the request's block table straight after every step."""

    tables: ClassVar[list[list[int]]] = []  # reset by the fixture below

    def step(self) -> list[Any]:
        outputs = super().step()
        _RecordingEngine.tables.append(self.kv.block_ids("attention-math"))
        return outputs


@pytest.fixture
def recorded_tables(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    _RecordingEngine.tables = []
    monkeypatch.setattr(inside_common, "LLMEngine", _RecordingEngine)  # lesson_engine's
    return _RecordingEngine.tables


def _check_structure(result: dict[str, Any], engine_table: list[int]) -> None:
    p, bs = result["position"], result["block_size"]
    blocks = result["blocks"]
    assert len(blocks) == math.ceil((p + 1) / bs)
    assert result["block_table"] == engine_table
    for i, block in enumerate(blocks):
        assert block["index"] == i
        assert block["block_id"] == engine_table[i]
        assert (block["start"], block["end"]) == (i * bs, min((i + 1) * bs, p + 1))
        assert len(block["scores"]) == block["end"] - block["start"]
        assert block["block_max"] == max(block["scores"])
        assert len(block["partial_output"]) == result["head_dim"]
    assert len(result["weights"]) == p + 1
    assert sum(result["weights"]) == pytest.approx(1.0, abs=TOL)
    for name in ("query", "output_blockwise", "output_online", "output_contiguous"):
        assert len(result[name]) == result["head_dim"]
    assert result["max_abs_diff"] < TOL
    assert result["max_abs_diff_online"] < TOL
    assert result["output_online"] == pytest.approx(result["output_blockwise"], abs=TOL)
    assert result["output_contiguous"] == pytest.approx(result["output_blockwise"], abs=TOL)


def test_structure_and_agreement_fp32(loaded_fp32: LoadedModel,
                                      recorded_tables: list[list[int]]) -> None:
    result = block_attention_math(loaded_fp32, PROMPT, layer=7, head=5, block_size=16)
    count = len(result["token_ids"])
    assert result["position"] == count - 1
    assert result["tokens"] == [loaded_fp32.tokenizer.decode([t]) for t in result["token_ids"]]
    assert "".join(result["tokens"]) == PROMPT
    assert (result["layer"], result["head"], result["kv_head"]) == (7, 5, 5 // 3)
    assert result["scale"] == pytest.approx(result["head_dim"] ** -0.5)
    assert recorded_tables[0] and len(recorded_tables[0]) == math.ceil(count / 16)
    _check_structure(result, recorded_tables[0])


def test_middle_position_odd_block_size(loaded_fp32: LoadedModel,
                                        recorded_tables: list[list[int]]) -> None:
    result = block_attention_math(loaded_fp32, PROMPT, layer=29, head=0, block_size=5,
                                  position=12)
    assert result["position"] == 12
    assert [(b["start"], b["end"]) for b in result["blocks"]] == [(0, 5), (5, 10), (10, 13)]
    _check_structure(result, recorded_tables[0])


def test_weights_and_online_state_follow_from_scores(loaded_fp32: LoadedModel) -> None:
    result = block_attention_math(loaded_fp32, PROMPT, layer=3, head=2, block_size=8)
    scores = torch.tensor([s for b in result["blocks"] for s in b["scores"]], dtype=torch.float64)
    expected = torch.softmax(scores, dim=0)
    assert torch.allclose(torch.tensor(result["weights"], dtype=torch.float64), expected,
                          atol=TOL)
    run_max, run_sum = -math.inf, 0.0
    for block in result["blocks"]:
        local = torch.tensor(block["scores"], dtype=torch.float64)
        assert block["block_sum_exp"] == pytest.approx(
            torch.exp(local - local.max()).sum().item(), rel=TOL)
        new_max = max(run_max, block["block_max"])
        run_sum = (run_sum * math.exp(run_max - new_max)
                   + block["block_sum_exp"] * math.exp(block["block_max"] - new_max))
        run_max = new_max
        assert (block["running_max"], block["running_sum_exp"]) == pytest.approx(
            (run_max, run_sum), rel=TOL)
    assert run_max == pytest.approx(scores.max().item(), rel=TOL)
    assert run_sum == pytest.approx(torch.exp(scores - scores.max()).sum().item(), rel=TOL)


def _rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Half-split RoPE of x [T, heads, d] at positions 0..T-1, written out anew."""
    tokens, _, dim = x.shape
    half = dim // 2
    inv_freq = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / dim)
    angles = torch.arange(tokens, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    first, second = x[..., :half], x[..., half:]
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


def _layer0_qk(loaded: LoadedModel, token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 0's post-RoPE q [T, H, d] and k [T, kvh, d] in float64, in plain torch from
    the model's weights: embedding, RMSNorm, the q and k slices of qkv_proj, RoPE."""
    arch, model = loaded.arch, loaded.model
    attn = model.layers[0].self_attn
    x = model.embed_tokens.weight[token_ids].double()
    norm_weight = model.layers[0].input_layernorm.weight.double()
    hidden = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + arch.rms_norm_eps) * norm_weight
    qkv = hidden @ attn.qkv_proj.weight.double().T
    if attn.qkv_proj.bias is not None:
        qkv = qkv + attn.qkv_proj.bias.double()
    q_size, kv_size = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    q = qkv[:, :q_size].view(len(token_ids), arch.num_heads, arch.head_dim)
    k = qkv[:, q_size:q_size + kv_size].view(len(token_ids), arch.num_kv_heads, arch.head_dim)
    return _rope(q, arch.rope_theta), _rope(k, arch.rope_theta)


def test_query_and_scores_match_an_independent_layer0(loaded_fp32: LoadedModel) -> None:
    position, head = 17, 7
    result = block_attention_math(loaded_fp32, PROMPT, layer=0, head=head, block_size=4,
                                  position=position)
    q, k = _layer0_qk(loaded_fp32, result["token_ids"])
    assert torch.allclose(torch.tensor(result["query"], dtype=torch.float64), q[position, head],
                          atol=1e-4)
    expected = k[:position + 1, result["kv_head"]] @ q[position, head] * result["scale"]
    scores = torch.tensor([s for b in result["blocks"] for s in b["scores"]], dtype=torch.float64)
    assert torch.allclose(scores, expected, atol=1e-4)


def test_bf16_agrees_in_float32_math(loaded_bf16: LoadedModel,
                                     recorded_tables: list[list[int]]) -> None:
    result = block_attention_math(loaded_bf16, PROMPT, layer=10, head=8, block_size=32)
    assert result["kv_head"] == 2
    _check_structure(result, recorded_tables[0])


def _engine(loaded: LoadedModel) -> LLMEngine:
    config = EngineConfig.from_kwargs(dtype=loaded.dtype, kv_cache_memory=SMALL_KV,
                                      max_model_len=256)
    return LLMEngine(config, loaded=loaded)


def _greedy_run(engine: LLMEngine) -> tuple[list[Any], list[torch.Tensor], list[int]]:
    """Metadata and logits of every step of a 4-token greedy run, and its tokens."""
    metas: list[Any] = []
    logits: list[torch.Tensor] = []
    prepare, execute = engine.runner._prepare, engine.runner.execute

    def recording_prepare(ordered):
        prepared = prepare(ordered)
        metas.append(prepared[1])
        return prepared

    def recording_execute(out):
        result = execute(out)
        logits.append(result.logits.clone())
        return result

    engine.runner._prepare = recording_prepare
    engine.runner.execute = recording_execute
    engine.add_request("r", PROMPT, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    tokens: list[int] = []
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens = output.outputs[0].token_ids
    return metas, logits, tokens


def test_probe_off_costs_nothing_and_on_changes_nothing(loaded_fp32: LoadedModel) -> None:
    plain = _engine(loaded_fp32)
    assert plain.runner.probe is None
    metas_off, logits_off, tokens_off = _greedy_run(plain)
    assert len(metas_off) == 4 and all(m.probe is None for m in metas_off)

    probed = _engine(loaded_fp32)
    probe = probed.runner.probe = ForwardProbe("r")
    metas_on, logits_on, tokens_on = _greedy_run(probed)
    assert all(m.probe is probe for m in metas_on)
    arch = loaded_fp32.arch
    n = len(probed.tokenize(PROMPT)[1])
    assert [(s.step, s.start_pos, s.num_tokens) for s in probe.steps] == [
        (0, 0, n), (1, n, 1), (2, n + 1, 1), (3, n + 2, 1)]
    last = probe.steps[-1]  # a decode: one row per layer, every point recorded
    assert sorted(last.layers) == list(range(arch.num_layers))
    assert all(sorted(points) == sorted(LAYER_POINTS) for points in last.layers.values())
    assert last.layer(5)["q"].shape == (1, arch.num_heads, arch.head_dim)
    assert last.layer(5)["attention_probs"].shape == (arch.num_heads, 1, n + 3)
    assert torch.equal(last.logits, logits_on[-1][0])
    assert tokens_on == tokens_off
    assert all(torch.equal(a, b) for a, b in zip(logits_on, logits_off, strict=True))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prompt": ""}, "prompt must be a non-empty string"),
    ({"prompt": "word " * (MAX_PROMPT_TOKENS + 1)}, f"at most {MAX_PROMPT_TOKENS}"),
    ({"layer": 30}, "layer must be an integer in \\[0, 30\\)"),
    ({"layer": -1}, "layer must be"),
    ({"head": 9}, "head must be an integer in \\[0, 9\\)"),
    ({"head": True}, "head must be"),
    ({"block_size": 0}, "block_size must be an integer in \\[1, 64\\]"),
    ({"block_size": 65}, "block_size must be"),
    ({"position": 4}, "position must be an integer in \\[-4, 4\\)"),
    ({"position": -5}, "position must be"),
])
def test_bad_input_raises_value_error(loaded_fp32: LoadedModel, kwargs: dict[str, Any],
                                      message: str) -> None:
    args = {"prompt": "one two three four", "layer": 0, "head": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        block_attention_math(loaded_fp32, **args)
