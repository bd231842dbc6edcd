"""Pipeline parallelism: which layers each stage holds, and how a step's activations
go from one stage to the next.

With `pipeline_parallel_size` P and `tensor_parallel_size` T there are P·T ranks:
rank r is tensor-parallel rank r % T of stage r // T. Stage s holds a contiguous range
of decoder layers (the first stage also the embedding, the last the final norm and the
LM head) and a KV pool for those layers only, indexed by the engine's block ids. A step
flows stage to stage: each rank sends the step (its SchedulerOutput) and the hidden
states and residual stream it produced to the rank with the same tensor-parallel index
in the next stage, with torch.distributed point-to-point sends. Sends are asynchronous,
so a stage that handed its step on can take the next one while the next stage
computes: up to P steps are in the pipeline at once (the engine's batch queue keeps
them there).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True, slots=True)
class StagePlace:
    """Where one rank sits in a tp × pp grid."""

    rank: int
    tp: int
    pp: int

    @property
    def stage(self) -> int:
        return self.rank // self.tp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.pp - 1

    def stage_ranks(self, stage: int) -> list[int]:
        return list(range(stage * self.tp, (stage + 1) * self.tp))

    @property
    def next_rank(self) -> int:
        """The same tensor-parallel rank in the next stage."""
        return self.rank + self.tp

    @property
    def previous_rank(self) -> int:
        return self.rank - self.tp


def stage_layers(num_layers: int, pp: int) -> list[range]:
    """Contiguous layer ranges, as even as they go (the earlier stages take one more
    when the layers do not divide: the last stage also runs the LM head)."""
    if not 1 <= pp <= num_layers:
        raise ValueError(f"pipeline_parallel_size must be in [1, {num_layers}] for a model "
                         f"with {num_layers} layers; got {pp}")
    base, extra = divmod(num_layers, pp)
    ranges, start = [], 0
    for stage in range(pp):
        size = base + (1 if stage < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


def keep_stage(model: Any, layers: range, first: bool, last: bool) -> Any:
    """Drop from `model` (a LlamaModel) what stage `layers` does not run: the other
    layers, the embedding unless first, the final norm and LM head unless last (a tied
    head keeps the embedding's weight alive: the head still reads it)."""
    model.layers = torch.nn.ModuleList(model.layers[i] for i in layers)
    if not first:
        model.embed_tokens = None
    if not last:
        model.norm = None
        model.lm_head = None
    return model


@dataclass(slots=True)
class StageMessage:
    """What one stage hands the next for one step: the command, the stages' timings so
    far, and the activations (None for commands other than a forward step)."""

    command: tuple
    timings: list[tuple[int, float, float]] = field(default_factory=list)  # (stage, start, end)
    hidden: torch.Tensor | None = None
    residual: torch.Tensor | None = None


class StageLink:
    """Point-to-point messages between two ranks over a process group: a length, the
    pickled header, then the activation tensors. A send returns at once; its buffers
    are kept until the next send waits for it (so the order of steps is kept)."""

    def __init__(self, group: Any, dtype: torch.dtype, hidden_size: int) -> None:
        self.group = group
        self.dtype = dtype
        self.hidden_size = hidden_size
        self._pending: list[Any] = []
        self._buffers: list[torch.Tensor] = []

    def send(self, message: StageMessage, dst: int) -> None:
        self.wait_sent()
        has_tensors = message.hidden is not None
        header = pickle.dumps((message.command, message.timings, has_tensors),
                              protocol=pickle.HIGHEST_PROTOCOL)
        payload = torch.frombuffer(bytearray(header), dtype=torch.uint8)
        self._buffers = [torch.tensor([payload.numel()], dtype=torch.int64), payload]
        if has_tensors:
            assert message.residual is not None
            self._buffers += [message.hidden.contiguous(), message.residual.contiguous()]
        self._pending = [dist.isend(t, dst, group=self.group) for t in self._buffers]

    def wait_sent(self) -> None:
        for work in self._pending:
            work.wait()
        self._pending, self._buffers = [], []

    def receive(self, src: int) -> StageMessage:
        length = torch.empty(1, dtype=torch.int64)
        dist.recv(length, src, group=self.group)
        payload = torch.empty(int(length.item()), dtype=torch.uint8)
        dist.recv(payload, src, group=self.group)
        command, timings, has_tensors = pickle.loads(payload.numpy().tobytes())
        message = StageMessage(command, timings)
        if has_tensors:
            rows = command[1].num_tokens
            message.hidden = torch.empty(rows, self.hidden_size, dtype=self.dtype)
            message.residual = torch.empty(rows, self.hidden_size, dtype=self.dtype)
            dist.recv(message.hidden, src, group=self.group)
            dist.recv(message.residual, src, group=self.group)
        return message


def bubble(stage_spans: list[tuple[int, float, float]], num_stages: int) -> dict[str, Any]:
    """How busy the stages were over a run, from each (stage, start, end) of every step:
    the span from the first start to the last end, each stage's busy share of it, and
    the bubble fraction, 1 − Σ busy / (stages × span): the share of stage-time spent
    idle (waiting for the stage before, or for the engine)."""
    if not stage_spans:
        return {"span_s": 0.0, "busy_share": [0.0] * num_stages, "bubble_fraction": None}
    span = max(end for _, _, end in stage_spans) - min(start for _, start, _ in stage_spans)
    busy = [0.0] * num_stages
    for stage, start, end in stage_spans:
        busy[stage] += end - start
    return {"span_s": span, "busy_share": [b / span if span else 0.0 for b in busy],
            "bubble_fraction": 1 - sum(busy) / (num_stages * span) if span else None}
