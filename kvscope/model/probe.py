"""A forward probe: copies of one request's intermediates, taken inside kvscope's own
forward pass (the scope's lessons on the model's insides read them).

Set `ModelRunner.probe = ForwardProbe(request_id)` and every step that computes
tokens of that request records, for its rows only, what the layers really computed:
the embedding rows, per layer the residual stream and the normalised input of both
sub-blocks, q/k/v before and after RoPE, the attention probabilities over the
request's context (worked out from the post-RoPE queries and the keys read back from
the paged pool through the request's block table: the very tensors the attention
kernel used), the attention and MLP outputs, the MLP's gate/up activations, the final
norm's output and the logits the sampler drew from.

With no probe set (the default) each capture point costs one `is None` check.
Everything kept is a float32 copy, so later steps that update the residual stream
in place do not change what was recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kvscope.attention.cpu_backend import gather_context

# what every probed layer records (names of LayerCapture's tensors)
LAYER_POINTS = ("residual_in", "input_norm", "q_pre_rope", "k_pre_rope", "q", "k", "v",
                "attention_probs", "attention_output", "residual_mid", "post_attention_norm",
                "gate_up", "mlp_output")


@dataclass(slots=True)
class StepCapture:
    """One step's records for the probed request: its tokens' rows of the flat batch."""

    step: int
    start_pos: int  # position of the first row (0 for a whole prompt)
    num_tokens: int
    embedding: torch.Tensor | None = None  # [n, hidden]
    layers: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    final_norm: torch.Tensor | None = None  # [n, hidden]
    logits: torch.Tensor | None = None  # [vocab]: the sampled row's, if the step sampled

    def layer(self, index: int) -> dict[str, torch.Tensor]:
        if index not in self.layers:
            raise KeyError(f"layer {index} was not probed")
        return self.layers[index]

    def residual_out(self, index: int) -> torch.Tensor:
        """The residual stream leaving layer `index` (what the next layer adds to)."""
        layer = self.layer(index)
        return layer["residual_mid"] + layer["mlp_output"]


@dataclass(slots=True)
class _Rows:
    """Where the probed request sits in the step being computed."""

    begin: int
    end: int
    block_table: torch.Tensor  # [blocks] long: the request's blocks, logical order
    capture: StepCapture


class ForwardProbe:
    """Records one request's intermediates step after step (see the module docstring).
    `layers` limits which layers record (None: all of them)."""

    def __init__(self, request_id: str, layers: set[int] | None = None) -> None:
        self.request_id = request_id
        self.layers = layers
        self.steps: list[StepCapture] = []
        self._rows: _Rows | None = None

    # -- set by the runner around a step --------------------------------------------

    def begin_step(self, step: int, begin: int, num_tokens: int, start_pos: int,
                   block_ids: list[int]) -> None:
        capture = StepCapture(step, start_pos, num_tokens)
        self.steps.append(capture)
        self._rows = _Rows(begin, begin + num_tokens,
                           torch.tensor(block_ids, dtype=torch.long), capture)

    def end_step(self) -> None:
        self._rows = None

    @property
    def active(self) -> bool:
        return self._rows is not None

    # -- capture points (called by the model) ---------------------------------------

    def wants(self, layer: int) -> bool:
        return self._rows is not None and (self.layers is None or layer in self.layers)

    def record(self, layer: int, name: str, tensor: torch.Tensor) -> None:
        """Keep a float32 copy of `tensor`'s rows of the probed request."""
        if self.wants(layer):
            rows = self._rows
            assert rows is not None
            rows.capture.layers.setdefault(layer, {})[name] = _copy(tensor[rows.begin:rows.end])

    def record_model(self, name: str, tensor: torch.Tensor) -> None:
        """"embedding" or "final_norm": rows of the whole model's input or output."""
        if self._rows is not None:
            setattr(self._rows.capture, name, _copy(tensor[self._rows.begin:self._rows.end]))

    def record_logits(self, logits: torch.Tensor) -> None:
        if self._rows is not None:
            self._rows.capture.logits = _copy(logits)

    def record_attention(self, layer: int, q: torch.Tensor, k_cache: torch.Tensor) -> None:
        """softmax(q·kᵀ/√d) over the request's context, keys read from the paged pool
        (called after the step's K/V were written): [heads, n, context]."""
        if not self.wants(layer):
            return
        rows = self._rows
        assert rows is not None
        start, n = rows.capture.start_pos, rows.capture.num_tokens
        queries = q[rows.begin:rows.end].float()  # [n, H, d]
        keys = gather_context(k_cache, rows.block_table)[:start + n].float()  # [ctx, kvh, d]
        heads, kv_heads, dim = queries.shape[1], keys.shape[1], queries.shape[2]
        keys = keys.repeat_interleave(heads // kv_heads, dim=1)  # query head h reads h // group
        scores = torch.einsum("nhd,chd->hnc", queries, keys) * dim ** -0.5
        query_pos = torch.arange(start, start + n)
        visible = torch.arange(start + n)[None, :] <= query_pos[:, None]
        scores.masked_fill_(~visible[None], float("-inf"))
        rows.capture.layers.setdefault(layer, {})["attention_probs"] = torch.softmax(scores, -1)


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(torch.float32, copy=True)
