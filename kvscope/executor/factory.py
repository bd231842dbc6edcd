"""The executor an engine gets: its model runner in the engine's process (tp = pp = 1),
or worker processes holding the model's shards and stages."""

from __future__ import annotations

import torch

from kvscope.config import ConfigError, EngineConfig
from kvscope.distributed.partition import PartitionError, partition
from kvscope.distributed.pipeline import stage_layers
from kvscope.executor.base import Executor
from kvscope.executor.multiproc import MultiprocExecutor, free_tcp_init_method
from kvscope.executor.uniproc import UniprocExecutor
from kvscope.model.loader import LoadedModel
from kvscope.runner.model_runner import ModelRunner
from kvscope.worker.weights import write_weights
from kvscope.worker.worker import WorkerSpec


def make_executor(config: EngineConfig, loaded: LoadedModel, num_blocks: int,
                  max_model_len: int, num_swap_blocks: int,
                  progress: bool = False) -> tuple[Executor, ModelRunner | None]:
    """(executor, the runner in this process or None when the workers hold the model)."""
    tp, pp = config.tensor_parallel_size, config.pipeline_parallel_size
    block_size = config.cache.block_size
    if tp == 1 and pp == 1:
        runner = ModelRunner(loaded.model, num_blocks, block_size, max_model_len,
                             config.dtype, num_swap_blocks)
        return UniprocExecutor(runner), runner
    arch = loaded.arch
    try:  # fail here, with the head counts, before any process starts
        partition(arch.num_heads, arch.num_kv_heads, arch.intermediate_size,
                  arch.vocab_size, tp)
        stage_layers(arch.num_layers, pp)
    except (PartitionError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    # the workers' weights are dense: they map the engine's, or, where the engine kept a
    # GGUF's quantized ones (a served model lending its weights to a lesson), read
    # the checkpoint again, dequantized
    weights = write_weights(loaded.model) if loaded.weights == "dense" else None
    try:
        local_ranks = config.world_size // config.nnodes
        spec = WorkerSpec(str(loaded.path), config.dtype, num_blocks, block_size,
                          max_model_len, num_swap_blocks, config.world_size,
                          _init_method(config),
                          threads=max(1, torch.get_num_threads() // local_ranks),
                          weights_file=None if weights is None else str(weights), arch=arch,
                          nnodes=config.nnodes, pp=pp)
        if config.distributed_executor_backend == "ray":
            from kvscope.executor.ray_executor import RayExecutor

            return RayExecutor(spec, progress), None
        return MultiprocExecutor(spec, progress), None
    finally:
        if weights is not None:
            weights.unlink()  # every worker holds its shard now (or none started)


def _init_method(config: EngineConfig) -> str:
    """Where the ranks meet: a free loopback port on one machine, the master's
    address when they span several (every node is told the same one)."""
    if config.nnodes == 1:
        return free_tcp_init_method()
    return f"tcp://{config.master_addr}:{config.master_port}"
