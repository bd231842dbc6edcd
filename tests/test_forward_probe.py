"""The forward probe against the oracle: what kvscope's own forward pass recorded for
the scope's lessons (attention probabilities per head, the residual stream after
every layer, the embedding rows, the final norm and the logits) equals what
transformers computes on the same fp32 weights, for several prompts, layers and
every head of a layer; and the probe changes nothing it watches."""

from __future__ import annotations

import pytest
import torch

from kvscope.model.loader import LoadedModel
from kvscope.scope.inside.common import probed_prefill
from tests.hf_twin import hf_twin

PROMPTS = [
    "The quick brown fox jumps over the lazy dog, and then it runs into the forest.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "In a paged KV cache, every request's keys and values live in fixed-size blocks that "
    "a block table maps from logical to physical.",
]
LAYERS = [0, 13, 29]
PROB_TOLERANCE = 1e-4
LOGIT_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def oracle(loaded_fp32: LoadedModel):
    return hf_twin(loaded_fp32, attn_implementation="eager")


@pytest.fixture(scope="module")
def runs(loaded_fp32: LoadedModel, oracle):
    """(our probed prefill, transformers' outputs) for each prompt."""
    pairs = []
    for prompt in PROMPTS:
        ids = list(loaded_fp32.tokenizer.encode(prompt))
        ours = probed_prefill(loaded_fp32, ids, layers=None)
        ours.engine.shutdown()
        with torch.inference_mode():
            theirs = oracle(torch.tensor([ids]), output_attentions=True,
                            output_hidden_states=True)
        pairs.append((ours, theirs))
    return pairs


def test_attention_probabilities_equal_transformers(runs, loaded_fp32: LoadedModel) -> None:
    heads = loaded_fp32.arch.num_heads
    for ours, theirs in runs:
        for layer in LAYERS:
            probs = ours.capture.layer(layer)["attention_probs"]  # [heads, T, T]
            expected = theirs.attentions[layer][0]
            assert probs.shape == expected.shape == (heads, len(ours.token_ids),
                                                     len(ours.token_ids))
            # every head of every probed layer (all heads of at least one layer)
            assert (probs - expected).abs().max().item() < PROB_TOLERANCE
            assert torch.all(probs.triu(1) == 0)  # causal: nothing from later keys


def test_residual_stream_and_logits_equal_transformers(runs, loaded_fp32: LoadedModel) -> None:
    num_layers = loaded_fp32.arch.num_layers
    for ours, theirs in runs:
        capture, hidden = ours.capture, theirs.hidden_states  # hidden[0]: the embedding
        assert torch.equal(capture.embedding, hidden[0][0])
        for layer in range(num_layers - 1):  # HF's last entry is after the final norm
            out = capture.residual_out(layer)
            expected = hidden[layer + 1][0]
            assert (out - expected).abs().max().item() < 1e-3 * expected.abs().max().item()
        final = capture.final_norm
        assert (final - hidden[-1][0]).abs().max().item() < 1e-3
        # the sampled row's logits are the last position's
        assert (capture.logits - theirs.logits[0, -1]).abs().max().item() < LOGIT_TOLERANCE
        assert ours.output_token_ids == [int(theirs.logits[0, -1].argmax())]


def test_pre_rope_queries_rotate_into_the_post_rope_ones(runs, loaded_fp32: LoadedModel) -> None:
    """q and k before RoPE, rotated by the HF formula at their positions, give the
    probed q and k after it: both points are the same projection."""
    arch = loaded_fp32.arch
    theta, dim = arch.rope_theta, arch.head_dim
    ours, _ = runs[0]
    points = ours.capture.layer(13)
    positions = torch.arange(len(ours.token_ids)).double()
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2).double() / dim)
    angles = torch.cat([torch.outer(positions, inv_freq)] * 2, dim=-1)[:, None]
    for pre, post in (("q_pre_rope", "q"), ("k_pre_rope", "k")):
        x = points[pre].double()
        rotated = torch.cat((-x[..., dim // 2:], x[..., :dim // 2]), dim=-1)
        expected = x * angles.cos() + rotated * angles.sin()
        assert (points[post].double() - expected).abs().max().item() < 1e-4
