"""This machine's memory as the GPU memory lesson shows it: the CPU's caches as Linux
lists them (/sys/devices/system/cpu/cpu0/cache), its main memory (/proc/meminfo), and
the loaded model's sizes from its own config and weights. Read, not measured; the
lesson takes the measured bandwidth from the roofline route (scope/inside/roofline.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvscope.model.loader import LoadedModel
from kvscope.scope.inside.cost_model import ModelCosts
from kvscope.scope.inside.roofline import cpu_description

CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """'48K' -> 49152 (sysfs writes cache sizes so)."""
    text = text.strip()
    if text and text[-1].upper() in UNITS:
        return int(text[:-1]) * UNITS[text[-1].upper()]
    return int(text)


def cpu_caches(root: Path = CACHE_DIR) -> list[dict[str, Any]]:
    """cpu0's caches, smallest level first: level, type, size and the CPUs sharing it."""
    caches = []
    for index in sorted(root.glob("index*")):
        try:
            field = {name: (index / name).read_text().strip()
                     for name in ("level", "type", "size", "shared_cpu_list")}
            caches.append({"level": int(field["level"]), "type": field["type"],
                           "size_bytes": parse_size(field["size"]),
                           "shared_cpu_list": field["shared_cpu_list"]})
        except (OSError, ValueError):
            continue
    return sorted(caches, key=lambda c: (c["level"], c["type"]))


def memory_total(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_memory(loaded: LoadedModel, name: str) -> dict[str, Any]:
    arch = loaded.arch
    return {
        "cpu": cpu_description(), "caches": cpu_caches(), "memory_bytes": memory_total(),
        "source": "read from /sys/devices/system/cpu/cpu0/cache and /proc/meminfo",
        "model": {"name": name, "num_parameters": arch.num_parameters(),
                  "num_layers": arch.num_layers, "hidden_size": arch.hidden_size,
                  "intermediate_size": arch.intermediate_size, "num_heads": arch.num_heads,
                  "num_kv_heads": arch.num_kv_heads, "head_dim": arch.head_dim,
                  "vocab_size": arch.vocab_size, "dtype": str(loaded.dtype).removeprefix("torch."),
                  "dtype_bytes": loaded.dtype.itemsize, "weights": loaded.weights,
                  "loaded_weight_bytes": ModelCosts.of(loaded).weight_bytes,
                  "kv_bytes_per_token": arch.kv_bytes_per_token(loaded.dtype.itemsize),
                  "kv_bytes_per_token_bf16": arch.kv_bytes_per_token(2)},
    }
