"""Beam search inside the engine equals Hugging Face transformers' beam search token for
token (fp32, widths 2 and 4, several length penalties and early-stopping modes), and
its beams share blocks as a tree: a pruned beam's blocks are freed on that step."""

from __future__ import annotations

import pytest
import torch

from kvscope.sampling_params import BeamSearchParams, SamplingParamsError
from tests.hf_twin import hf_twin

QUESTIONS = ["What is 2+2? Answer with one word.", "Say hi.", "Name a color."]
MAX_TOKENS = 32


@pytest.fixture(scope="module")
def hf(loaded_fp32):
    return hf_twin(loaded_fp32)


@pytest.fixture(scope="module")
def llm(make_llm):
    return make_llm(max_model_len=512)


@pytest.fixture(scope="module")
def prompts(llm) -> list[list[int]]:
    return [llm.apply_chat_template([{"role": "user", "content": q}]) for q in QUESTIONS]


def hf_beams(hf, prompt: list[int], params: BeamSearchParams, eos: int) -> list[list[int]]:
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          num_beams=params.beam_width, num_return_sequences=params.beam_width,
                          max_new_tokens=params.max_tokens, length_penalty=params.length_penalty,
                          early_stopping=params.early_stopping, eos_token_id=eos,
                          pad_token_id=eos)
    return [row[len(prompt):].tolist() for row in out]


@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("length_penalty, early_stopping",
                         [(1.0, False), (0.5, True), (2.0, "never")])
def test_beams_equal_transformers(llm, hf, prompts, width, length_penalty, early_stopping):
    params = BeamSearchParams(beam_width=width, max_tokens=MAX_TOKENS,
                              length_penalty=length_penalty, early_stopping=early_stopping)
    (eos,) = llm.engine.eos_token_ids
    outputs = llm.beam_search(prompts, params)
    for prompt, out in zip(prompts, outputs, strict=True):
        theirs = hf_beams(hf, prompt, params, eos)
        width_out = len(theirs[0])
        ours = [c.token_ids + [eos] * (width_out - len(c.token_ids)) for c in out.outputs]
        assert ours == theirs
        assert [c.finish_reason for c in out.outputs] == \
            ["stop" if c.token_ids[-1] == eos else "length" for c in out.outputs]
    assert llm.engine.kv.num_free_blocks == llm.engine.num_blocks


def test_pruned_beams_free_their_blocks_on_that_step(llm, prompts):
    engine = llm.engine
    engine.add_beam_request("b", prompts[1], BeamSearchParams(beam_width=4, max_tokens=20))
    group = engine.beams.groups["b"]
    seen_prunes = 0
    while engine.has_unfinished_requests():
        before = {beam.request_id: engine.kv.block_ids(beam.request_id) for beam in group.beams}
        engine.step()
        if "b" not in engine.beams.groups:
            break
        alive = {beam.request_id for beam in group.beams}
        pruned = set(before) - alive
        seen_prunes += len(pruned)
        for request_id in pruned:
            assert not engine.kv.has_table(request_id)  # freed on the step it was pruned
        held = [b for beam in group.beams for b in engine.kv.block_ids(beam.request_id)]
        # every block is held exactly by the beams whose tables list it
        for block_id in set(held):
            assert engine.kv.pool.blocks[block_id].ref_cnt == held.count(block_id)
        assert engine.kv.num_free_blocks == engine.num_blocks - len(set(held))
    assert seen_prunes > 0
    assert engine.kv.num_free_blocks == engine.num_blocks


def test_abort_a_beam_search(llm, prompts):
    engine = llm.engine
    engine.add_beam_request("x", prompts[0], BeamSearchParams(beam_width=3, max_tokens=20))
    for _ in range(4):
        engine.step()
    engine.abort_request("x")
    assert not engine.has_unfinished_requests()
    assert engine.kv.num_free_blocks == engine.num_blocks


@pytest.mark.parametrize("fields, param", [
    ({"beam_width": 0, "max_tokens": 4}, "beam_width"),
    ({"beam_width": 2, "max_tokens": 0}, "max_tokens"),
    ({"beam_width": 2, "max_tokens": 4, "early_stopping": "soon"}, "early_stopping"),
    ({"beam_width": 2, "max_tokens": 4, "length_penalty": float("nan")}, "length_penalty"),
])
def test_bad_beam_params(fields, param):
    with pytest.raises(SamplingParamsError) as info:
        BeamSearchParams(**fields)
    assert info.value.param == param


def test_beams_in_a_pool_too_small_for_all_of_them_finish_unchanged(make_llm, llm, prompts):
    """Beams waiting for their group give way to a preempted sibling (no deadlock), and
    a beam forked from a preempted parent is recomputed: the result does not change."""
    params = BeamSearchParams(beam_width=4, max_tokens=12)
    roomy = llm.beam_search(prompts[2], params)[0]
    block_bytes = llm.engine.loaded.arch.kv_bytes_per_token(4) * 4
    tight = make_llm(kv_cache_memory=block_bytes * 16, max_model_len=64, block_size=4,
                     enable_prefix_caching=False)
    out = tight.beam_search(prompts[2], params)[0]
    assert tight.engine.get_stats()["num_preemptions"] > 0
    assert [c.token_ids for c in out.outputs] == [c.token_ids for c in roomy.outputs]
    assert tight.engine.kv.num_free_blocks == tight.engine.num_blocks
