"""Weights kept in groups of 32 integers with a scale each, as GGUF stores them.

Two formats, both read by the C++ kernels of `kernels/quant_gemm.cpp`:

* ``q4``: 4-bit integers, two per byte (byte i of a group holds elements i and i + 16,
  GGUF's nibble order), a scale d and an offset m per group; a weight is
  (q + zero) * d + m. GGUF's Q4_1 is zero = 0; Q4_0 is zero = -8 with m = 0.
* ``q8``: signed 8-bit integers and a scale per group; a weight is q * d (Q8_0). Its
  groups hold 32 weights, or 16 (`group`) for weights that come from Q6_K.

GGUF tensors of these types are taken over as they are (their fp16 scales widened to
float32). The others are repacked, each scale and offset computed as the gguf package
computes them, so the weights are bit for bit its dequantisation:

* Q4_K super-blocks (256 weights, 8 groups of 32 with 6-bit scales and minima under two
  fp16 factors) become q4 groups of scale d · sc and offset -dmin · m;
* Q5_0 groups (5-bit integers q, an fp16 scale d; a weight is d · (q - 16)) become q8
  groups of the integers q - 16: 8 bits a weight instead of 5.5, read by the same kernel;
* Q6_K super-blocks (256 weights, 16 groups of 16 6-bit integers with an int8 scale each
  under one fp16 factor d) become q8 groups of 16, scale d · sc, integers q - 32.
 Float weights can be quantized at load the way llama.cpp makes
Q4_1 and Q8_0 (`quantize`). `dequantize` computes exactly the kernels' weights.

For the int8-activation kernel (`kernels/int8_gemm.cpp`) a q4 tensor is `interleave`d
16 rows at a time: the same integers, scales and offsets, ordered so that one vector of
bytes holds 4 bytes of each of 16 rows and each int32 lane of an integer dot product is
one output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

GROUP = 32  # weights per scale
FORMATS = ("q4", "q8")
# GGUF type name → (format, zero); the block layouts are read in `from_gguf_blocks`
GGUF_TYPES = {"Q4_0": ("q4", -8.0), "Q4_1": ("q4", 0.0), "Q8_0": ("q8", 0.0),
              "Q4_K": ("q4", 0.0), "Q5_0": ("q8", 0.0), "Q6_K": ("q8", 0.0)}
INTERLEAVE = 16  # weight rows an interleaved q4 tensor keeps together
SUPER_BLOCK = 256  # weights per Q4_K and Q6_K block
Q6_K_GROUP = 16  # weights per scale in a Q6_K block


@dataclass(slots=True)
class QuantizedTensor:
    """A [rows, cols] weight matrix in groups of `group` weights (32, or 16 for a q8
    from Q6_K) along each row."""

    fmt: str
    q: torch.Tensor  # q4: uint8 [rows, cols / 2]; q8: int8 [rows, cols]
    scales: torch.Tensor  # float32 [rows, cols / group]
    offsets: torch.Tensor | None = None  # q4: float32 [rows, cols / 32]
    zero: float = 0.0
    group: int = GROUP
    # q4 only: 16 rows at a time (`interleave`); q uint8 [rows / 16, cols / 32, 256],
    # scales and offsets float32 [rows / 16, cols / 32, 16]
    interleaved: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        if self.interleaved:
            blocks, groups, _ = self.scales.shape
            return blocks * INTERLEAVE, groups * self.group
        return self.scales.shape[0], self.scales.shape[1] * self.group

    @property
    def nbytes(self) -> int:
        extra = self.offsets.nbytes if self.offsets is not None else 0
        return self.q.nbytes + self.scales.nbytes + extra

    def dequantize(self) -> torch.Tensor:
        """float32 [rows, cols], each weight computed as the kernels compute it."""
        rows, cols = self.shape
        groups = cols // self.group
        if self.fmt == "q8":
            ints = self.q.view(rows, groups, self.group).float()
            return (ints * self.scales[..., None]).view(rows, cols)
        assert self.offsets is not None
        ints, scales, offsets = self._row_order()
        weights = (ints.float() + self.zero) * scales[..., None] + offsets[..., None]
        return weights.view(rows, cols)

    def _row_order(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A q4 tensor's integers [rows, groups, 32] in element order, its scales and
        offsets [rows, groups]."""
        rows, cols = self.shape
        groups = cols // GROUP
        assert self.offsets is not None
        if not self.interleaved:
            packed = self.q.view(rows, groups, GROUP // 2)
            return torch.cat([packed & 0xF, packed >> 4], dim=-1), self.scales, self.offsets
        # [block, group, vector j, row in block, byte b]; element 8j + 4 · nibble + b
        packed = self.q.view(rows // INTERLEAVE, groups, 4, INTERLEAVE, 4)
        ints = torch.stack([packed & 0xF, packed >> 4], dim=-2)
        ints = ints.permute(0, 3, 1, 2, 4, 5).reshape(rows, groups, GROUP)
        return ints, _rows_of_blocks(self.scales), _rows_of_blocks(self.offsets)

    def rows(self, index: torch.Tensor | slice) -> QuantizedTensor:
        """The rows `index` selects (a slice or a permutation), as a new tensor."""
        if self.interleaved:
            raise ValueError("select rows before interleaving")
        return QuantizedTensor(self.fmt, self.q[index].contiguous(),
                               self.scales[index].contiguous(),
                               None if self.offsets is None else self.offsets[index].contiguous(),
                               self.zero, self.group)


def cat_rows(parts: list[QuantizedTensor]) -> QuantizedTensor:
    """Stack weight matrices of one format (q, k and v; gate and up) row-wise."""
    first = parts[0]
    if any(p.interleaved for p in parts):
        raise ValueError("fuse weights before interleaving")
    if any((p.fmt, p.zero, p.group) != (first.fmt, first.zero, first.group) for p in parts):
        raise ValueError("cannot fuse weights quantized in different formats")
    return QuantizedTensor(first.fmt, torch.cat([p.q for p in parts]),
                           torch.cat([p.scales for p in parts]),
                           None if first.offsets is None
                           else torch.cat([p.offsets for p in parts]),  # type: ignore[misc]
                           first.zero, first.group)


def interleave(t: QuantizedTensor) -> QuantizedTensor:
    """A q4 tensor (rows a multiple of 16) in the int8 kernel's order: per 16 rows and
    group, 4 vectors of 64 bytes, vector j holding 4 bytes of each row, whose low nibbles
    are elements 8j..8j+3 of the group and high nibbles 8j+4..8j+7."""
    rows, cols = t.shape
    if t.fmt != "q4" or t.interleaved or rows % INTERLEAVE:
        raise ValueError(f"interleave takes a q4 tensor of a multiple of {INTERLEAVE} rows")
    groups = cols // GROUP
    ints, scales, offsets = t._row_order()
    # [block, row in block, group, vector j, nibble, byte] → [block, group, j, row, byte, nibble]
    split = ints.view(rows // INTERLEAVE, INTERLEAVE, groups, 4, 2, 4).permute(0, 2, 3, 1, 5, 4)
    q = (split[..., 0] | (split[..., 1] << 4)).reshape(rows // INTERLEAVE, groups, 256)
    return QuantizedTensor("q4", q.contiguous(), _blocks_of_rows(scales),
                           _blocks_of_rows(offsets), t.zero, t.group, interleaved=True)


def _blocks_of_rows(values: torch.Tensor) -> torch.Tensor:
    """[rows, groups] → [rows / 16, groups, 16]"""
    rows, groups = values.shape
    return values.view(rows // INTERLEAVE, INTERLEAVE, groups).transpose(1, 2).contiguous()


def _rows_of_blocks(values: torch.Tensor) -> torch.Tensor:  # the inverse
    blocks, groups, _ = values.shape
    return values.transpose(1, 2).reshape(blocks * INTERLEAVE, groups)


def from_gguf_blocks(raw: np.ndarray, type_name: str, rows: int, cols: int) -> QuantizedTensor:
    """A GGUF tensor of a type in GGUF_TYPES (its raw blocks, row after row)."""
    repack = {"Q4_K": _from_q4_k, "Q5_0": _from_q5_0, "Q6_K": _from_q6_k}
    if type_name in repack:
        return repack[type_name](raw, rows, cols)
    fmt, zero = GGUF_TYPES[type_name]
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(rows, cols // GROUP, -1)

    def halves(start: int) -> torch.Tensor:  # fp16 fields → float32 [rows, groups]
        field = np.ascontiguousarray(blocks[..., start:start + 2]).view(np.float16)
        return torch.from_numpy(field.astype(np.float32).reshape(rows, cols // GROUP))

    scales = halves(0)
    if type_name == "Q4_1":
        offsets = halves(2)
        q = blocks[..., 4:]
    elif type_name == "Q4_0":
        offsets = torch.zeros_like(scales)
        q = blocks[..., 2:]
    else:
        offsets = None
        q = np.ascontiguousarray(blocks[..., 2:]).view(np.int8)
    ints = torch.from_numpy(np.ascontiguousarray(q).reshape(rows, -1))
    return QuantizedTensor(fmt, ints, scales, offsets, zero)


def _from_q4_k(raw: np.ndarray, rows: int, cols: int) -> QuantizedTensor:
    """Q4_K blocks (fp16 d and dmin, 12 bytes of 6-bit scales and minima, 128 bytes of
    nibbles) as q4 groups of 32."""
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(rows, cols // SUPER_BLOCK, 144)

    def half(start: int) -> np.ndarray:  # an fp16 field → float32 [rows, blocks, 1]
        return np.ascontiguousarray(blocks[..., start:start + 2]).view(np.float16).astype(
            np.float32)

    low, high, extra = blocks[..., 4:8], blocks[..., 8:12], blocks[..., 12:16]
    sc = np.concatenate([low & 0x3F, (extra & 0x0F) | ((low >> 2) & 0x30)], axis=-1)
    mins = np.concatenate([high & 0x3F, (extra >> 4) | ((high >> 2) & 0x30)], axis=-1)
    scales = half(0) * sc.astype(np.float32)  # [rows, blocks, 8], as gguf computes them
    offsets = -(half(2) * mins.astype(np.float32))
    # each 32 bytes of nibbles hold two groups: the low nibbles one, the high the next
    nibbles = blocks[..., 16:].reshape(rows, -1, 4, 1, 32) >> np.array([0, 4], np.uint8)[:, None]
    ints = (nibbles & 0x0F).reshape(rows, -1, GROUP)  # [rows, groups, 32] in order
    packed = ints[..., :GROUP // 2] | (ints[..., GROUP // 2:] << 4)  # kvscope's nibble order
    groups = cols // GROUP
    return QuantizedTensor("q4", torch.from_numpy(np.ascontiguousarray(packed).reshape(rows, -1)),
                           torch.from_numpy(np.ascontiguousarray(scales).reshape(rows, groups)),
                           torch.from_numpy(np.ascontiguousarray(offsets).reshape(rows, groups)),
                           0.0)


def _fp16(field: np.ndarray) -> np.ndarray:
    """Two-byte fields of fp16 → float32 (the last axis of 2 bytes dropped)."""
    return np.ascontiguousarray(field).view(np.float16)[..., 0].astype(np.float32)


def _from_q5_0(raw: np.ndarray, rows: int, cols: int) -> QuantizedTensor:
    """Q5_0 groups (fp16 d, 4 bytes of high bits, 16 bytes of low nibbles) as q8."""
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(rows, cols // GROUP, 22)
    high = np.ascontiguousarray(blocks[..., 2:6]).view(np.uint32)  # bit i: element i
    high_bits = (high >> np.arange(GROUP, dtype=np.uint32)) & 1  # [rows, groups, 32]
    nibbles = blocks[..., 6:]
    low = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)  # elements 0-15, 16-31
    ints = (low | (high_bits.astype(np.uint8) << 4)).astype(np.int8) - np.int8(16)
    return QuantizedTensor("q8", torch.from_numpy(ints.reshape(rows, cols)),
                           torch.from_numpy(_fp16(blocks[..., 0:2])))


def _from_q6_k(raw: np.ndarray, rows: int, cols: int) -> QuantizedTensor:
    """Q6_K blocks (128 bytes of low nibbles, 64 of high bit pairs, 16 int8 scales, fp16
    d) as q8 groups of 16."""
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(rows, cols // SUPER_BLOCK, 210)
    # each half of a block: 64 bytes of low nibbles (4 runs of 32 weights) and 32 bytes
    # whose bit pairs are the high bits of those 4 runs
    low = blocks[..., :128].reshape(rows, -1, 2, 1, 64) >> np.array([0, 4], np.uint8)[:, None]
    low = (low & 0x0F).reshape(rows, -1, 2, 4, 32)
    high = blocks[..., 128:192].reshape(rows, -1, 2, 1, 32) >> np.array(
        [0, 2, 4, 6], np.uint8)[:, None]
    high = (high & 0x03).reshape(rows, -1, 2, 4, 32)
    ints = (low | (high << 4)).astype(np.int8) - np.int8(32)
    sub_scales = np.ascontiguousarray(blocks[..., 192:208]).view(np.int8).astype(np.float32)
    scales = _fp16(blocks[..., 208:210])[..., None] * sub_scales  # [rows, blocks, 16]
    groups = cols // Q6_K_GROUP
    return QuantizedTensor("q8", torch.from_numpy(np.ascontiguousarray(ints).reshape(rows, cols)),
                           torch.from_numpy(np.ascontiguousarray(scales).reshape(rows, groups)),
                           group=Q6_K_GROUP)


def quantize(weight: torch.Tensor, fmt: str) -> QuantizedTensor:
    """Quantize a float weight [rows, cols] (cols a multiple of 32): ``q4`` with each
    group's minimum as offset and (max - min) / 15 as scale (as Q4_1), ``q8`` with
    max |w| / 127 as scale (as Q8_0). Scales are rounded to fp16, as GGUF stores them."""
    if fmt not in FORMATS:
        raise ValueError(f"quantization format must be one of {FORMATS}; got {fmt!r}")
    rows, cols = weight.shape
    if cols % GROUP:
        raise ValueError(f"cannot quantize a weight of {cols} columns in groups of {GROUP}")
    groups = weight.float().reshape(rows, cols // GROUP, GROUP)
    if fmt == "q8":
        scale = (groups.abs().amax(-1) / 127).half().float()
        inverse = torch.where(scale == 0, 0.0, 1 / scale)
        ints = torch.round(groups * inverse[..., None]).clamp(-127, 127).to(torch.int8)
        return QuantizedTensor("q8", ints.reshape(rows, cols), scale)
    low, high = groups.amin(-1), groups.amax(-1)
    scale = ((high - low) / 15).half().float()
    offset = low.half().float()
    inverse = torch.where(scale == 0, 0.0, 1 / scale)
    ints = torch.floor((groups - offset[..., None]) * inverse[..., None] + 0.5)
    ints = ints.clamp(0, 15).to(torch.uint8)
    packed = ints[..., :GROUP // 2] | (ints[..., GROUP // 2:] << 4)
    return QuantizedTensor("q4", packed.reshape(rows, cols // 2), scale, offset, 0.0)
