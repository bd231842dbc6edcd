"""The decode stack (model/decode_stack.py) runs a decode step's layers in one C++ call:
it must give the Python layer loop's bits exactly, be taken on every step of decodes
only and on no other, and stand aside where it does not know the model's pieces."""

from __future__ import annotations

import pytest
import torch

from kvscope import LLM, SamplingParams
from kvscope.kernels.build import cpu_kernels
from kvscope.model.decode_stack import DecodeStack
from kvscope.model.loader import load_model

pytestmark = pytest.mark.skipif(cpu_kernels() is None,
                                reason="C++ kernels could not be built here")

PROMPTS = ["The capital of France is", "def fibonacci(n):",
           "Explain why the sky is blue, in two sentences, to a child."]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=3)


class CountingStack:
    """Counts the steps the stack ran and the layers each ran."""

    def __init__(self, stack: DecodeStack) -> None:
        self.stack = stack
        self.runs: list[tuple[int, int]] = []  # (rows, layers)

    def run(self, x, residual, meta, kv_caches):
        self.runs.append((x.shape[0], len(kv_caches)))
        return self.stack.run(x, residual, meta, kv_caches)


def generate(llm: LLM, stack_on: bool) -> tuple[list, CountingStack | None]:
    """Greedy tokens and their logprobs (top 3 with values), with or without the stack."""
    model = llm.engine.loaded.model
    model._decode_stack_built = False
    counting = None
    if stack_on:
        stack = model.decode_stack()
        assert stack is not None, "the stack runs this model"
        counting = CountingStack(stack)
        model._decode_stack = counting  # type: ignore[assignment]
    else:
        model._decode_stack, model._decode_stack_built = None, True
    try:
        outputs = llm.generate(PROMPTS, GREEDY)
    finally:  # the next engine on these weights builds its own
        model._decode_stack, model._decode_stack_built = None, False
    seen = [(o.outputs[0].token_ids, [sorted(step.items()) for step in o.outputs[0].logprobs])
            for o in outputs]
    return seen, counting


@pytest.fixture(scope="module", params=["float32", "bfloat16", "q4"])
def llm(request: pytest.FixtureRequest, loaded_fp32, loaded_bf16) -> LLM:
    """The bundled model dense in fp32 and bf16, and on its own Q4_1 weights (the
    served default: int8 activations)."""
    loaded = {"float32": lambda: loaded_fp32, "bfloat16": lambda: loaded_bf16,
              "q4": lambda: load_model(None, torch.float32, quantization="auto")}
    model = loaded[request.param]()
    return LLM(dtype=model.dtype, loaded=model, kv_cache_memory=64 << 20, max_model_len=512)


def test_the_stack_gives_the_layer_loops_tokens_and_logprobs_bit_for_bit(llm: LLM):
    """Same greedy tokens and the same logprob values (float equality) over 12 decode
    steps of 3 requests, in every weight format; and every decode-only step, and no
    step with prompt rows, went through the stack, with all 30 layers."""
    with_stack, counting = generate(llm, stack_on=True)
    without, _ = generate(llm, stack_on=False)
    assert with_stack == without
    assert counting is not None
    # the three prompts prefill in the first step; then 11 steps decode all three
    assert counting.runs == [(3, 30)] * 11
    assert llm.engine.scheduler.num_steps >= 12


def test_a_self_draft_runs_its_first_layers_through_the_stack(loaded_fp32):
    """Early exit (the self-draft proposer) runs the first 10 layers through the stack,
    verification rows (several per request) take the loop, and the output is still the
    plain greedy output."""
    spec = {"method": "self_draft", "num_speculative_tokens": 2, "draft_layers": 10}
    plain, _ = generate(LLM(dtype="float32", loaded=loaded_fp32, kv_cache_memory=64 << 20,
                            max_model_len=512), stack_on=False)
    drafted, counting = generate(LLM(dtype="float32", loaded=loaded_fp32,
                                     kv_cache_memory=64 << 20, max_model_len=512,
                                     speculative_config=spec), stack_on=True)
    assert [tokens for tokens, _ in drafted] == [tokens for tokens, _ in plain]
    assert counting is not None
    layer_counts = {layers for _, layers in counting.runs}
    assert 10 in layer_counts


def test_the_switch_and_unknown_pieces_leave_the_python_loop(llm: LLM, monkeypatch):
    model = llm.engine.loaded.model
    monkeypatch.setenv("KVSCOPE_DECODE_STACK", "0")
    assert DecodeStack.build(model) is None
    monkeypatch.delenv("KVSCOPE_DECODE_STACK")
    original = model.layers[3].self_attn.attend
    monkeypatch.setattr(model.layers[3].self_attn, "attend", lambda *args: original(*args))
    assert DecodeStack.build(model) is None  # an attention backend it does not know
