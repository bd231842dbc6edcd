"""Which part of each layer a tensor-parallel rank holds.

Attention splits by KV group: a rank holds some KV heads and exactly the query heads
that read them, so attention needs no communication until o_proj. Three cases, as in
vLLM and Megatron:

- even: the KV heads divide among the ranks (`num_kv_heads % tp == 0`);
- replicated: fewer KV heads than ranks, `tp % num_kv_heads == 0` and the query heads
  divide among the ranks: each KV head is held by `tp / num_kv_heads` ranks, each of
  which takes its own share of that head's query heads;
- uneven: neither divides, but there are at least as many KV heads as ranks: the first
  `num_kv_heads % tp` ranks hold one KV group more than the others (the bundled
  SmolLM2-135M at tp=2: rank 0 holds KV heads 0-1 and query heads 0-5, rank 1 KV head 2
  and query heads 6-8).

The MLP's intermediate neurons and the vocabulary split in contiguous ranges, the first
ranks taking one more where the size does not divide.
"""

from __future__ import annotations

from dataclasses import dataclass


class PartitionError(ValueError):
    """The model cannot be split over this many ranks."""


@dataclass(frozen=True, slots=True)
class Range:
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def as_slice(self) -> slice:
        return slice(self.start, self.stop)


@dataclass(frozen=True, slots=True)
class RankShard:
    """What one rank holds, as ranges of the unsharded model's indices."""

    rank: int
    q_heads: Range
    kv_heads: Range
    intermediate: Range
    vocab: Range


@dataclass(frozen=True, slots=True)
class Partition:
    tp: int
    kind: str  # "even" | "replicated" | "uneven" (attention; "single" at tp=1)
    shards: tuple[RankShard, ...]


def split_evenly(size: int, parts: int) -> list[Range]:
    """`size` items in `parts` contiguous ranges, the first ones one larger."""
    base, extra = divmod(size, parts)
    ranges, start = [], 0
    for part in range(parts):
        stop = start + base + (part < extra)
        ranges.append(Range(start, stop))
        start = stop
    return ranges


def partition(num_heads: int, num_kv_heads: int, intermediate_size: int, vocab_size: int,
              tp: int) -> Partition:
    """Split a model over `tp` ranks, or raise PartitionError naming the head counts."""
    if tp < 1:
        raise PartitionError(f"tensor_parallel_size must be at least 1; got {tp}")
    if num_heads % num_kv_heads:
        raise PartitionError(f"{num_heads} query heads do not group over {num_kv_heads} "
                             "KV heads")
    if intermediate_size < tp or vocab_size < tp:
        raise PartitionError(f"tensor_parallel_size {tp} exceeds the MLP width "
                             f"({intermediate_size}) or the vocabulary ({vocab_size})")
    kind, attention = _attention_split(num_heads, num_kv_heads, tp)
    mlp = split_evenly(intermediate_size, tp)
    vocab = split_evenly(vocab_size, tp)
    shards = tuple(RankShard(r, q, kv, mlp[r], vocab[r]) for r, (q, kv) in enumerate(attention))
    return Partition(tp, kind, shards)


def _attention_split(num_heads: int, num_kv_heads: int,
                     tp: int) -> tuple[str, list[tuple[Range, Range]]]:
    group = num_heads // num_kv_heads  # query heads per KV head
    if tp == 1:
        return "single", [(Range(0, num_heads), Range(0, num_kv_heads))]
    if num_kv_heads >= tp:
        kind = "even" if num_kv_heads % tp == 0 else "uneven"
        kv = split_evenly(num_kv_heads, tp)
        return kind, [(Range(r.start * group, r.stop * group), r) for r in kv]
    if tp % num_kv_heads == 0 and num_heads % tp == 0:
        per_rank = num_heads // tp
        ranks_per_kv = tp // num_kv_heads
        return "replicated", [
            (Range(r * per_rank, (r + 1) * per_rank),
             Range(r // ranks_per_kv, r // ranks_per_kv + 1)) for r in range(tp)]
    raise PartitionError(
        f"the model has {num_heads} query heads and {num_kv_heads} KV heads: "
        f"tensor_parallel_size {tp} must be at most {num_kv_heads} (each rank holding "
        f"whole KV groups), or a multiple of {num_kv_heads} that divides {num_heads} "
        "(KV heads replicated)")
