"""Engine configuration. Every bad value fails here, with a message naming the field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from kvscope.speculative.config import SpeculativeConfig

DEFAULT_KV_CACHE_MEMORY = 1 << 30  # 1 GiB: ~46k tokens of SmolLM2-135M in bf16
DEFAULT_SWAP_SPACE = 256 << 20  # bytes; allocated only in swap mode
PREEMPTION_MODES = ("recompute", "swap")
POLICIES = ("fcfs", "priority")
BATCHING = ("continuous", "static")
QUANTIZATIONS = ("auto", "none", "int8", "int4")
QUANTIZED_ACTIVATIONS = ("int8", "float")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def default_dtype() -> torch.dtype:
    """bfloat16 where the CPU computes it natively (AVX512-BF16 / AMX), else float32
    (see `default_dtype_reason`)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("AVX512", "AVX512_BF16", "AMX") and _cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def default_dtype_reason() -> str:
    """Why `default_dtype` chose what it chose, for the start-up log."""
    if default_dtype() == torch.bfloat16:
        return "auto: this CPU multiplies bf16 natively (AVX512-BF16/AMX), twice fp32's rate"
    return ("auto: this CPU has no bf16 arithmetic, so bf16 activations would only add "
            "conversions; weights can still be smaller (bf16 or quantized, widened in "
            "registers)")


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype:
    if value is None or value == "auto":
        return default_dtype()
    if isinstance(value, torch.dtype):
        dtype = value
    else:
        names = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
                 "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if value not in names:
            raise ConfigError(f"dtype must be one of auto, float32, bfloat16; got {value!r}")
        dtype = names[value]
    if dtype not in (torch.float32, torch.bfloat16):
        raise ConfigError(f"dtype must be float32 or bfloat16; got {dtype}")
    return dtype


@dataclass(slots=True)
class CacheConfig:
    """The paged KV cache: block size and how much memory the pool may take."""

    block_size: int = 16
    kv_cache_memory: int | None = None  # bytes; None → kv_cache_memory_fraction or the default
    kv_cache_memory_fraction: float | None = None  # fraction of currently available RAM
    enable_prefix_caching: bool = True
    swap_space: int = DEFAULT_SWAP_SPACE  # bytes of swap space for preemption_mode="swap"

    def validate(self) -> None:
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ConfigError(f"block_size must be a positive integer; got {self.block_size!r}")
        if not isinstance(self.enable_prefix_caching, bool):
            raise ConfigError("enable_prefix_caching must be True or False; "
                              f"got {self.enable_prefix_caching!r}")
        if not isinstance(self.swap_space, int) or self.swap_space < 0:
            raise ConfigError(f"swap_space must be a number of bytes >= 0; got {self.swap_space!r}")
        if self.kv_cache_memory is not None and (
            not isinstance(self.kv_cache_memory, int) or self.kv_cache_memory <= 0
        ):
            raise ConfigError(
                f"kv_cache_memory must be a positive number of bytes; got {self.kv_cache_memory!r}"
            )
        frac = self.kv_cache_memory_fraction
        if frac is not None and not 0 < frac <= 0.95:
            raise ConfigError(f"kv_cache_memory_fraction must be in (0, 0.95]; got {frac!r}")
        if self.kv_cache_memory is not None and frac is not None:
            raise ConfigError("set kv_cache_memory or kv_cache_memory_fraction, not both")

    def budget_bytes(self) -> int:
        if self.kv_cache_memory is not None:
            return self.kv_cache_memory
        if self.kv_cache_memory_fraction is not None:
            return int(available_memory_bytes() * self.kv_cache_memory_fraction)
        return DEFAULT_KV_CACHE_MEMORY


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); falls back to 4 GiB elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


@dataclass(slots=True)
class SchedulerConfig:
    """Continuous batching limits for one engine step."""

    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    long_prefill_token_threshold: int = 0  # >0: cap each prefill chunk at this many tokens
    preemption_mode: str = "recompute"  # or "swap": copy the victim's K/V out and back
    policy: str = "fcfs"  # or "priority": lower Request.priority runs first
    # "static": the batch a real static batcher runs, for comparison (scheduling lessons):
    # up to max_num_seqs requests form a batch and only once every one of them finished
    # does the next batch form (sched/scheduler.py)
    batching: str = "continuous"

    def validate(self) -> None:
        if self.batching not in BATCHING:
            raise ConfigError(f"batching must be one of {BATCHING}; got {self.batching!r}")
        if self.preemption_mode not in PREEMPTION_MODES:
            raise ConfigError(f"preemption_mode must be one of {PREEMPTION_MODES}; "
                              f"got {self.preemption_mode!r}")
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {POLICIES}; got {self.policy!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        threshold = self.long_prefill_token_threshold
        if not isinstance(threshold, int) or threshold < 0:
            raise ConfigError(
                f"long_prefill_token_threshold must be a non-negative integer; got {threshold!r}"
            )


NODE_FIELDS = ("nnodes", "node_rank", "master_addr", "master_port")


@dataclass(slots=True)
class EngineConfig:
    """Everything the engine needs; built from LLM(**kwargs) or the CLI."""

    model: str | None = None  # None → the bundled SmolLM2-135M-Instruct GGUF
    dtype: torch.dtype = field(default_factory=default_dtype)
    max_model_len: int | None = None  # None → the model's context length, capped at 8192
    seed: int = 0
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    speculative: SpeculativeConfig | None = None  # None: no speculative decoding
    tensor_parallel_size: int = 1  # >1: the model is sharded over that many worker processes
    # >1: the layers are split into that many stages, each on its own worker processes
    # (tensor_parallel_size of them), with up to that many steps in flight at once
    pipeline_parallel_size: int = 1
    # how the worker processes start: "mp" (subprocesses, on this machine and the
    # nodes of `nnodes`) or "ray" (actors in a Ray placement group; kvscope[ray])
    distributed_executor_backend: str = "mp"
    # weights: "auto" keeps a GGUF's Q4_0/Q4_1/Q8_0/Q4_K/Q5_0/Q6_K weights quantized, "none"
    # dequantizes them at load, "int8"/"int4" quantize every linear from float at load
    # (model/quant.py)
    quantization: str = "auto"
    # what 4-bit linears multiply their weights with at decode: "int8" quantizes each
    # activation row in groups of 32 for integer dot products (llama.cpp's arithmetic,
    # 2x the float kernel at one row); "float" keeps float32 / bf16 activations. 8-bit
    # weights always take float activations (bound by memory at one row already).
    quantized_activations: str = "int8"
    # the model's ranks spread over several machines: this one is node `node_rank`
    # of `nnodes`, each running world_size / nnodes ranks; node 0 runs the
    # engine and rank 0, the others only their ranks (distributed/nodes.py). The ranks
    # meet at master_addr:master_port (torch.distributed's TCP rendezvous).
    # disaggregated prefill/decode: the KV connector and this engine's role in it
    # (kv_transfer/config.py); None: none
    kv_transfer: Any = None
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EngineConfig:
        """Build from flat keyword arguments (vLLM style); unknown names fail loudly."""
        cache_fields = {f.name for f in dataclasses.fields(CacheConfig)}
        sched_fields = {f.name for f in dataclasses.fields(SchedulerConfig)}
        own_fields = {"model", "dtype", "max_model_len", "seed", "speculative_config",
                      "tensor_parallel_size", "pipeline_parallel_size", "quantization",
                      "quantized_activations", "kv_transfer_config",
                      "distributed_executor_backend", *NODE_FIELDS}
        unknown = set(kwargs) - cache_fields - sched_fields - own_fields
        if unknown:
            known = sorted(cache_fields | sched_fields | own_fields)
            raise ConfigError(f"unknown engine option(s) {sorted(unknown)}; known options: {known}")
        cache = CacheConfig(**{k: v for k, v in kwargs.items() if k in cache_fields})
        sched = SchedulerConfig(**{k: v for k, v in kwargs.items() if k in sched_fields})
        config = cls(
            model=kwargs.get("model"),
            dtype=parse_dtype(kwargs.get("dtype")),
            max_model_len=kwargs.get("max_model_len"),
            seed=kwargs.get("seed", 0),
            cache=cache,
            scheduler=sched,
            speculative=_speculative(kwargs.get("speculative_config")),
            tensor_parallel_size=kwargs.get("tensor_parallel_size", 1),
            pipeline_parallel_size=kwargs.get("pipeline_parallel_size", 1),
            kv_transfer=_kv_transfer(kwargs.get("kv_transfer_config")),
            distributed_executor_backend=kwargs.get("distributed_executor_backend") or "mp",
            quantization=kwargs.get("quantization") or "auto",
            quantized_activations=kwargs.get("quantized_activations") or "int8",
            **{name: kwargs[name] for name in NODE_FIELDS if kwargs.get(name) is not None},
        )
        config.validate()
        return config

    def load_quantization(self) -> str:
        """What the model is loaded with: "auto" keeps a GGUF's quantized weights only
        where one process runs the whole model (worker processes get dense weights)."""
        if self.quantization == "auto" and self.world_size > 1:
            return "none"
        return self.quantization

    @property
    def world_size(self) -> int:
        """The model's worker processes: tensor_parallel_size × pipeline_parallel_size."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def validate(self) -> None:
        self.cache.validate()
        self.scheduler.validate()
        if self.max_model_len is not None and (
            not isinstance(self.max_model_len, int) or self.max_model_len < 2
        ):
            raise ConfigError(f"max_model_len must be an integer >= 2; got {self.max_model_len!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer; got {self.seed!r}")
        tp = self.tensor_parallel_size
        if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
            raise ConfigError(f"tensor_parallel_size must be an integer >= 1; got {tp!r}")
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(f"quantization must be one of {', '.join(QUANTIZATIONS)}; "
                              f"got {self.quantization!r}")
        if self.quantized_activations not in QUANTIZED_ACTIVATIONS:
            raise ConfigError("quantized_activations must be one of "
                              f"{', '.join(QUANTIZED_ACTIVATIONS)}; "
                              f"got {self.quantized_activations!r}")
        pp = self.pipeline_parallel_size
        if not isinstance(pp, int) or isinstance(pp, bool) or pp < 1:
            raise ConfigError(f"pipeline_parallel_size must be an integer >= 1; got {pp!r}")
        if self.world_size > 1 and self.quantization in ("int8", "int4"):
            raise ConfigError("quantization int8/int4 does not combine with "
                              "tensor_parallel_size > 1 or pipeline_parallel_size > 1 yet; "
                              "use quantization='none'")
        if pp > 1 and self.speculative is not None:
            raise ConfigError("speculative decoding does not combine with "
                              "pipeline_parallel_size > 1 yet: a step's drafts need the "
                              "previous step's token, which is still in the pipeline")
        self._validate_backend()
        if self.kv_transfer is not None and self.world_size > 1:
            raise ConfigError("kv_transfer_config works with one process for now: "
                              "tensor_parallel_size and pipeline_parallel_size must be 1")
        self._validate_nodes()

    def _validate_backend(self) -> None:
        backend = self.distributed_executor_backend
        if backend not in ("mp", "ray"):
            raise ConfigError(f"distributed_executor_backend must be mp or ray; got {backend!r}")
        if backend == "ray" and self.world_size == 1:
            raise ConfigError("distributed_executor_backend 'ray' starts the workers of "
                              "tensor_parallel_size × pipeline_parallel_size > 1")
        if backend == "ray" and self.nnodes > 1:
            raise ConfigError("with distributed_executor_backend 'ray', Ray places the "
                              "ranks on its cluster's nodes: leave nnodes at 1")
        if backend == "ray":
            from kvscope.executor.ray_executor import ray_missing

            if (missing := ray_missing()) is not None:
                raise ConfigError(missing)

    def _validate_nodes(self) -> None:
        nnodes, rank = self.nnodes, self.node_rank
        if not isinstance(nnodes, int) or isinstance(nnodes, bool) or nnodes < 1:
            raise ConfigError(f"nnodes must be an integer >= 1; got {nnodes!r}")
        if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < nnodes:
            raise ConfigError(f"node_rank must be an integer in [0, {nnodes}); got {rank!r}")
        if nnodes > 1 and self.world_size % nnodes:
            raise ConfigError(f"tensor_parallel_size × pipeline_parallel_size "
                              f"({self.world_size}) must be a multiple of nnodes ({nnodes}): "
                              "every node runs as many ranks")
        port = self.master_port
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ConfigError(f"master_port must be a TCP port number; got {port!r}")


def _kv_transfer(options: Any) -> Any:
    if options is None:
        return None
    from kvscope.kv_transfer.config import KVTransferConfig  # it imports ConfigError

    return KVTransferConfig.from_dict(options)


def _speculative(options: Any) -> SpeculativeConfig | None:
    if options is None:
        return None
    from kvscope.speculative.config import SpeculativeConfig  # it imports ConfigError

    return SpeculativeConfig.from_dict(options)
