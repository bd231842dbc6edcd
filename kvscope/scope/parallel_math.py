"""Expert and context parallelism in numbers, computed from model shapes, not run.

kvscope runs dense models only, on one device or split by tensor parallelism, so
nothing here is measured. The mixture-of-experts models below are a table of shapes
typed from each model's published config.json; the loaded model's numbers come from
its own config. Every figure says where it comes from: a config, or an assumption
(uniform routing, load-balanced chunking, a full ring pass) that the formula needs.

Expert parallelism over E ranks puts num_experts / E of every MoE layer's experts on
each rank and sends each token's hidden vector to the ranks of its k experts and back
(two all-to-alls per MoE layer). Context parallelism over C ranks splits one long
sequence's tokens, so each rank keeps 1/C of its KV cache and receives the other
ranks' K/V (ring attention) so every query still sees every earlier key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from kvscope.model.loader import LoadedModel
from kvscope.scope.kv_sizes import kv_bytes_per_token

BF16 = 2  # bytes per weight and per cached value for the published models
MAX_RANKS = 8
MAX_BATCH = 65_536
MAX_SEQ_LEN = 1 << 20  # 1,048,576 tokens

CONFIG = "computed from the published config.json"
LOADED = "computed from the loaded model's config"
UNIFORM = "assumption: uniform routing (every expert gets the same share of tokens)"
SPREAD = "assumption: the batch's tokens start spread evenly over the ranks"
REPLICATED = "assumption: every weight but the routed experts' is replicated on every rank"
INPUTS = "computed from seq_len and cp"
BALANCED = ("assumption: load-balanced chunking (2C equal chunks; rank i holds chunks i "
            "and 2C-1-i)")
CONTIGUOUS = "for contrast: rank i holds the i-th contiguous 1/C of the sequence"
RING = "assumption: a full ring pass (each rank receives every other rank's K/V once)"


@dataclass(frozen=True, slots=True)
class MoEShape:
    """The fields of a mixture-of-experts model's config.json that the figures need."""

    key: str
    name: str
    hidden_size: int
    expert_intermediate_size: int  # each routed expert's MLP width
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int  # routed experts per MoE layer
    experts_per_token: int  # top-k
    vocab_size: int
    shared_expert_intermediate_size: int = 0  # an always-on expert beside the routed ones
    tied_embeddings: bool = False

    @property
    def ep_sizes(self) -> list[int]:
        """EP sizes up to MAX_RANKS that split the experts evenly."""
        return [e for e in range(1, MAX_RANKS + 1) if self.num_experts % e == 0]


# From each model's published config.json (every MoE layer alike; all three untied):
# Mixtral: num_local_experts 8, num_experts_per_tok 2, intermediate_size 14336.
# Qwen1.5-MoE: num_experts 60, num_experts_per_tok 4, moe_intermediate_size 1408,
#   shared_expert_intermediate_size 5632.
# OLMoE: num_experts 64, num_experts_per_tok 8, intermediate_size 1024.
MOE_MODELS: tuple[MoEShape, ...] = (
    MoEShape("mixtral-8x7b", "Mixtral-8x7B-v0.1", hidden_size=4096,
             expert_intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
             head_dim=128, num_experts=8, experts_per_token=2, vocab_size=32000),
    MoEShape("qwen1.5-moe-a2.7b", "Qwen1.5-MoE-A2.7B", hidden_size=2048,
             expert_intermediate_size=1408, num_layers=24, num_heads=16, num_kv_heads=16,
             head_dim=128, num_experts=60, experts_per_token=4, vocab_size=151936,
             shared_expert_intermediate_size=5632),
    MoEShape("olmoe-1b-7b", "OLMoE-1B-7B-0924", hidden_size=2048,
             expert_intermediate_size=1024, num_layers=16, num_heads=16, num_kv_heads=16,
             head_dim=128, num_experts=64, experts_per_token=8, vocab_size=50304),
)
MODELS_BY_KEY = {m.key: m for m in MOE_MODELS}


def figure(key: str, label: str, value: int | float, unit: str, formula: str,
           *sources: str) -> dict[str, Any]:
    """One number with how it was computed and where its inputs come from."""
    return {"key": key, "label": label, "value": value, "unit": unit, "formula": formula,
            "source": "; ".join(sources)}


def whole(x: Fraction) -> int | float:
    """An exact expectation as a JSON number: an int when it is whole."""
    return int(x) if x.denominator == 1 else float(x)


def rounded(x: Fraction) -> int:
    """Round half up to a whole number (of bytes)."""
    return int(x + Fraction(1, 2)) if x >= 0 else -int(-x + Fraction(1, 2))


# -- parameters of one MoE model -------------------------------------------------------------


def params_per_expert(m: MoEShape) -> int:
    """gate, up and down projections of one expert's SwiGLU MLP."""
    return 3 * m.hidden_size * m.expert_intermediate_size


def expert_params(m: MoEShape) -> int:
    return m.num_layers * m.num_experts * params_per_expert(m)


def attention_params(m: MoEShape) -> int:
    """q and o (heads × head_dim each way) plus k and v (KV heads × head_dim), every layer."""
    return m.num_layers * m.hidden_size * m.head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)


def router_params(m: MoEShape) -> int:
    return m.num_layers * m.hidden_size * m.num_experts


def shared_expert_params(m: MoEShape) -> int:
    return m.num_layers * 3 * m.hidden_size * m.shared_expert_intermediate_size


def embedding_params(m: MoEShape) -> int:
    """The embedding table, and the LM head when it is not tied to it."""
    return m.vocab_size * m.hidden_size * (1 if m.tied_embeddings else 2)


def dense_params(m: MoEShape) -> int:
    """Everything every token uses: attention, router, shared expert, embeddings (norm
    weights and biases left out; they are a tiny fraction)."""
    return attention_params(m) + router_params(m) + shared_expert_params(m) + embedding_params(m)


def active_params(m: MoEShape) -> int:
    """What one token runs through: its k experts in every layer plus the dense part."""
    return m.num_layers * m.experts_per_token * params_per_expert(m) + dense_params(m)


# -- expert parallelism -------------------------------------------------------------------------


def check_ep(m: MoEShape, ep: int) -> None:
    if ep not in m.ep_sizes:
        raise ValueError(f"ep must split {m.name}'s {m.num_experts} experts evenly: one of "
                         f"{', '.join(map(str, m.ep_sizes))}")


def experts_per_rank(m: MoEShape, ep: int) -> int:
    check_ep(m, ep)
    return m.num_experts // ep


def expert_bytes_per_rank(m: MoEShape, ep: int) -> int:
    return m.num_layers * experts_per_rank(m, ep) * params_per_expert(m) * BF16


def tokens_per_expert(m: MoEShape, batch: int) -> Fraction:
    """Expected tokens each expert gets per step: B × k / num_experts (uniform routing)."""
    return Fraction(batch * m.experts_per_token, m.num_experts)


def all_to_all_bytes_per_layer(m: MoEShape, ep: int, batch: int) -> Fraction:
    """Bytes one MoE layer moves between ranks in a step, all ranks together: each token's
    hidden vector (bf16) goes to its k experts and the result comes back, and only the
    (E-1)/E of experts on other ranks cost a transfer."""
    check_ep(m, ep)
    return Fraction(2 * batch * m.experts_per_token * m.hidden_size * BF16 * (ep - 1), ep)


def expert_parallel(m: MoEShape, ep: int, batch: int) -> dict[str, Any]:
    check_ep(m, ep)
    h, i, n, k, layers = (m.hidden_size, m.expert_intermediate_size, m.num_experts,
                          m.experts_per_token, m.num_layers)
    per_expert = params_per_expert(m)
    experts, dense = expert_params(m), dense_params(m)
    per_rank = experts_per_rank(m, ep)
    expert_bytes = expert_bytes_per_rank(m, ep)
    dense_bytes = dense * BF16
    per_layer = all_to_all_bytes_per_layer(m, ep, batch)
    shared = (f" + {layers} × 3 × {h:,} × {m.shared_expert_intermediate_size:,} shared expert"
              if m.shared_expert_intermediate_size else "")
    embed = f"{m.vocab_size:,} × {h:,}" + ("" if m.tied_embeddings else " × 2")
    figures = [
        figure("params_per_expert", "parameters per expert", per_expert, "params",
               f"3 × {h:,} × {i:,} (gate, up, down)", CONFIG),
        figure("expert_params", "expert parameters, all layers", experts, "params",
               f"{layers} layers × {n} experts × {per_expert:,}", CONFIG),
        figure("attention_params", "attention parameters, all layers", attention_params(m),
               "params", f"{layers} × {h:,} × {m.head_dim} × (2 × {m.num_heads} + 2 × "
               f"{m.num_kv_heads})", CONFIG),
        figure("dense_params", "dense parameters (all but the routed experts)", dense,
               "params", f"{attention_params(m):,} attention + {layers} × {h:,} × {n} router"
               f"{shared} + {embed} embeddings", CONFIG),
        figure("expert_share", "experts' share of all parameters", experts / (experts + dense),
               "fraction", f"{experts:,} / ({experts:,} + {dense:,})", CONFIG),
        figure("active_params", "parameters one token runs through", active_params(m),
               "params", f"{layers} × {k} experts × {per_expert:,} + {dense:,}", CONFIG),
        figure("experts_per_rank", "experts per rank, every layer", per_rank, "experts",
               f"{n} / {ep}", CONFIG),
        figure("expert_bytes_per_rank", "expert weights per rank (bf16)", expert_bytes, "bytes",
               f"{layers} × {per_rank} × {per_expert:,} × 2 bytes", CONFIG),
        figure("dense_bytes_per_rank", "dense weights per rank (bf16)", dense_bytes, "bytes",
               f"{dense:,} × 2 bytes", CONFIG, REPLICATED),
        figure("weight_bytes_per_rank", "weights per rank (bf16)", expert_bytes + dense_bytes,
               "bytes", f"{expert_bytes:,} + {dense_bytes:,}", CONFIG, REPLICATED),
        figure("tokens_per_expert", "expected tokens per expert per step",
               whole(tokens_per_expert(m, batch)), "tokens", f"{batch:,} × {k} / {n}", CONFIG,
               UNIFORM),
        figure("tokens_per_rank", "expected token-expert pairs per rank per step",
               whole(Fraction(batch * k, ep)), "tokens", f"{batch:,} × {k} / {ep}", CONFIG,
               UNIFORM),
        figure("all_to_all_bytes_per_layer", "all-to-all bytes per MoE layer per step",
               rounded(per_layer), "bytes",
               f"2 (there and back) × {batch:,} × {k} × {h:,} × 2 bytes × {ep - 1}/{ep}",
               CONFIG, UNIFORM, SPREAD),
        figure("all_to_all_bytes_per_step", "all-to-all bytes per step, all layers",
               rounded(layers * per_layer), "bytes", f"{layers} layers × the above",
               CONFIG, UNIFORM, SPREAD),
    ]
    ranks = [{"rank": r, "experts": [r * per_rank, (r + 1) * per_rank],
              "expert_bytes": expert_bytes, "dense_bytes": dense_bytes} for r in range(ep)]
    return {"model": m.key, "name": m.name, "ep": ep, "batch": batch,
            "one_device_bytes": (experts + dense) * BF16, "ranks": ranks, "figures": figures}


# -- context parallelism ------------------------------------------------------------------------


def check_cp(cp: int, seq_len: int) -> None:
    if not 1 <= cp <= MAX_RANKS:
        raise ValueError(f"cp must be between 1 and {MAX_RANKS}")
    if seq_len < 2 * cp or seq_len % (2 * cp):
        raise ValueError(f"seq_len must be a multiple of 2 × cp = {2 * cp}: load-balanced "
                         "chunking cuts the sequence into 2 × cp equal chunks")


def causal_pairs(start: int, stop: int) -> int:
    """(query, key) pairs of queries start..stop-1 under a causal mask: query q sees q + 1 keys."""
    return (stop * (stop + 1) - start * (start + 1)) // 2


def attention_flops(pairs: int, num_heads: int, head_dim: int, num_layers: int) -> int:
    """Q·K scores and the weighted sum of V: 2 matmuls × 2 FLOPs per multiply-add."""
    return 2 * 2 * pairs * num_heads * head_dim * num_layers


def balanced_pairs(cp: int, seq_len: int, rank: int) -> int:
    """Causal pairs of rank `rank` holding chunks rank and 2C-1-rank of 2C."""
    check_cp(cp, seq_len)
    s = seq_len // (2 * cp)
    far = 2 * cp - 1 - rank
    return causal_pairs(rank * s, (rank + 1) * s) + causal_pairs(far * s, (far + 1) * s)


def context_parallel(name: str, num_layers: int, num_heads: int, num_kv_heads: int,
                     head_dim: int, dtype_bytes: int, cp: int, seq_len: int,
                     source: str) -> dict[str, Any]:
    check_cp(cp, seq_len)
    bpt = kv_bytes_per_token(num_layers, num_kv_heads, head_dim, dtype_bytes)
    whole_kv = bpt * seq_len
    per_rank_tokens = seq_len // cp
    total_pairs = causal_pairs(0, seq_len)
    per_rank_pairs = balanced_pairs(cp, seq_len, 0)
    busiest = causal_pairs(seq_len - per_rank_tokens, seq_len)

    def flops(pairs: int) -> int:
        return attention_flops(pairs, num_heads, head_dim, num_layers)

    shape = f"{num_heads} heads × {head_dim} × {num_layers} layers"
    figures = [
        figure("tokens_per_rank", "tokens per rank", per_rank_tokens, "tokens",
               f"{seq_len:,} / {cp}", INPUTS),
        figure("kv_bytes_per_token", "KV bytes per token", bpt, "bytes",
               f"2 × {num_layers} × {num_kv_heads} × {head_dim} × {dtype_bytes} bytes", source),
        figure("kv_bytes_sequence", "KV cache of the whole sequence", whole_kv, "bytes",
               f"{bpt:,} × {seq_len:,}", source),
        figure("kv_bytes_per_rank", "KV cache per rank", whole_kv // cp, "bytes",
               f"{bpt:,} × {seq_len:,} / {cp}", source),
        figure("ring_bytes_received_per_rank", "K/V each rank receives in ring attention",
               whole_kv * (cp - 1) // cp, "bytes", f"{bpt:,} × {seq_len:,} × {cp - 1}/{cp}",
               source, RING),
        figure("attention_flops", "causal prefill attention FLOPs, whole sequence",
               flops(total_pairs), "flop",
               f"2 × 2 × {total_pairs:,} pairs ({seq_len:,} × {seq_len + 1:,} / 2) × {shape}",
               source),
        figure("attention_flops_per_rank", "attention FLOPs per rank",
               flops(per_rank_pairs), "flop", f"the above / {cp}", source, BALANCED),
        figure("attention_flops_busiest_contiguous", "busiest rank's attention FLOPs with "
               "contiguous chunks", flops(busiest), "flop",
               f"2 × 2 × {busiest:,} pairs (the last {per_rank_tokens:,} queries) × {shape}",
               source, CONTIGUOUS),
    ]
    return {"name": name, "figures": figures}


def loaded_context_parallel(loaded: LoadedModel, name: str, cp: int,
                            seq_len: int) -> dict[str, Any]:
    arch = loaded.arch
    dtype = str(loaded.dtype).removeprefix("torch.")
    result = context_parallel(name, arch.num_layers, arch.num_heads, arch.num_kv_heads,
                              arch.head_dim, loaded.dtype.itemsize, cp, seq_len, LOADED)
    return {**result, "loaded": True, "dtype": dtype}


def moe_context_parallel(m: MoEShape, cp: int, seq_len: int) -> dict[str, Any]:
    result = context_parallel(m.name, m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim,
                              BF16, cp, seq_len, CONFIG)
    return {**result, "loaded": False, "dtype": "bfloat16"}


# -- the endpoint ---------------------------------------------------------------------------------


def parallel_math(loaded: LoadedModel, loaded_name: str, model: str, ep: int, batch: int,
                  cp: int, seq_len: int) -> dict[str, Any]:
    """GET /scope/api/parallel-math: every figure for one EP and one CP setting."""
    if model not in MODELS_BY_KEY:
        raise ValueError(f"model must be one of {', '.join(MODELS_BY_KEY)}")
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be between 1 and {MAX_BATCH}")
    if not 1 <= seq_len <= MAX_SEQ_LEN:
        raise ValueError(f"seq_len must be between 1 and {MAX_SEQ_LEN}")
    m = MODELS_BY_KEY[model]
    check_ep(m, ep)
    check_cp(cp, seq_len)
    return {
        "note": "computed, not run: kvscope runs dense models only, and nothing on this "
                "page is measured",
        "inputs": {"model": model, "ep": ep, "batch": batch, "cp": cp, "seq_len": seq_len},
        "models": [{**asdict(s), "ep_sizes": s.ep_sizes, "source": "its published config.json"}
                   for s in MOE_MODELS],
        "expert_parallel": expert_parallel(m, ep, batch),
        "context_parallel": {
            "cp": cp, "seq_len": seq_len,
            "models": [loaded_context_parallel(loaded, loaded_name, cp, seq_len),
                       *(moe_context_parallel(s, cp, seq_len) for s in MOE_MODELS)],
        },
    }
