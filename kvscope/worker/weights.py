"""Hand the engine's loaded weights to its worker processes.

Reading and dequantizing a checkpoint takes seconds per process; the engine has already
done it. It writes its model's tensors once to a safetensors file in shared memory
(/dev/shm where there is one), each worker maps the file (no copy, no parse of the
original checkpoint) and copies out only its shard, and the engine deletes the file
once every worker is ready.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from kvscope.model.arch import ModelArch
from kvscope.model.layers.linear import Linear
from kvscope.model.llama import LlamaModel

SHARED_MEMORY = Path("/dev/shm")
LM_HEAD = "lm_head.weight"


def write_weights(model: LlamaModel) -> Path:
    """The model's tensors in a new file (the caller deletes it); a tied LM head is
    left out and tied again on load."""
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    assert model.lm_head is not None
    if model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr():
        del state[LM_HEAD]
    folder = SHARED_MEMORY if SHARED_MEMORY.is_dir() else None
    handle, name = tempfile.mkstemp(prefix="kvscope-weights-", suffix=".safetensors",
                                    dir=folder)
    os.close(handle)
    save_file(state, name)
    return Path(name)


def read_weights(path: Path, arch: ModelArch) -> LlamaModel:
    """A model with the tensors of `path` (mapped from the file, not copied)."""
    state = load_file(str(path))
    lm_head = state.pop(LM_HEAD, None)
    model = LlamaModel(arch)
    model.load_state_dict(state, strict=True, assign=True)
    model.lm_head = Linear.from_weight(model.embed_tokens.weight if lm_head is None
                                       else lm_head)
    return model.eval()
