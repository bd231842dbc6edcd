"""What one engine step costs in arithmetic and in bytes, from the model's shapes and
the bytes its weights really occupy: the FLOPs of the linears (2 per weight per
token), of the LM head (for the rows that sample) and of attention (q·k and the
weighted sum of values over each token's context), and the minimum bytes moved
(every weight read once, the context's K/V read once, the new K/V written).
An estimate by counting, not a measurement: the lesson says so."""

from __future__ import annotations

from dataclasses import dataclass

from kvscope.model.layers.linear import Linear
from kvscope.model.layers.quantized_linear import QuantizedLinear
from kvscope.model.loader import LoadedModel


@dataclass(frozen=True, slots=True)
class ModelCosts:
    params: int  # weights of the decoder layers' linears
    head_params: int  # the LM head's
    weight_bytes: int  # bytes those weights occupy, as stored (quantized or not)
    attention_flops_per_key: int  # per token, per visible key, over all layers
    kv_bytes_per_token: int

    @classmethod
    def of(cls, loaded: LoadedModel) -> ModelCosts:
        model, arch = loaded.model, loaded.arch
        layers = [m for m in model.layers.modules() if isinstance(m, Linear | QuantizedLinear)]
        head = model.lm_head
        assert head is not None
        return cls(params=sum(_params(m) for m in layers), head_params=_params(head),
                   weight_bytes=sum(_bytes(m) for m in [*layers, head]),
                   attention_flops_per_key=4 * arch.num_heads * arch.head_dim * arch.num_layers,
                   kv_bytes_per_token=arch.kv_bytes_per_token(loaded.dtype.itemsize))

    def step(self, num_tokens: int, start_pos: int, sample_rows: int = 1) -> tuple[int, int, int]:
        """(FLOPs, weight bytes, KV bytes) of a step computing positions
        [start_pos, start_pos + num_tokens) of one request."""
        keys_seen = sum(p + 1 for p in range(start_pos, start_pos + num_tokens))
        flops = (2 * self.params * num_tokens + 2 * self.head_params * sample_rows
                 + self.attention_flops_per_key * keys_seen)
        kv_bytes = self.kv_bytes_per_token * (start_pos + 2 * num_tokens)  # read + write
        return flops, self.weight_bytes, kv_bytes

    @property
    def flops_per_token(self) -> int:
        return 2 * self.params


def _params(module: Linear | QuantizedLinear) -> int:
    if isinstance(module, QuantizedLinear):
        return module.out_features * module.in_features
    return module.weight.numel()


def _bytes(module: Linear | QuantizedLinear) -> int:
    return module.weight.nbytes  # a QuantizedTensor's: codes, scales and offsets
