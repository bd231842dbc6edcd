"""One tensor-parallel rank, in its own process.

Every rank joins one torch.distributed process group (gloo on CPU), loads the
checkpoint, keeps only its shard (kvscope/distributed/parallel_layers.py) and builds a
model runner whose KV pool holds only its KV heads, indexed by the driver's block ids.
Rank 0 also talks to the engine over a pipe: it receives each command, broadcasts it
to the other ranks (torch.distributed's broadcast_object_list), and sends back what
its runner returned; the other ranks compute the same step and their layers meet in
the all-reduces. A rank that fails stops its process; the engine then ends them all.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pickle
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from kvscope.distributed.pipeline import StagePlace
from kvscope.worker.pipeline_stage import StageGroups, serve_stage

PARENT_POLL_S = 0.5
COMMAND_WAIT_S = 30 * 24 * 3600.0  # how long a rank waits for the next command
AUTHKEY_ENV = "KVSCOPE_WORKER_AUTHKEY"  # how a worker learns the key to the engine's address


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What every rank needs to build its share of the engine."""

    model_path: str
    dtype: torch.dtype
    num_blocks: int
    block_size: int
    max_model_len: int
    num_swap_blocks: int
    world_size: int  # tensor_parallel_size × pipeline_parallel_size ranks
    init_method: str
    threads: int
    timeout_s: float = 120.0  # a collective waiting longer than this fails the step
    weights_file: str | None = None  # the engine's weights (worker/weights.py); None:
    # read the checkpoint at model_path
    arch: Any = None  # the model's ModelArch, with weights_file
    nnodes: int = 1  # >1: ranks on other machines get this spec from rank 0 (below)
    pp: int = 1  # pipeline stages (distributed/pipeline.py); rank r is in stage r // tp

    @property
    def tp(self) -> int:
        return self.world_size // self.pp


def worker_main(rank: int, spec: WorkerSpec, conn: Connection | None) -> None:
    """A rank's whole life: join the group, load the shard, serve commands until
    told to stop (rank 0 relays them from the engine through `conn`)."""
    die_with_parent()
    torch.set_num_threads(spec.threads)
    dist.init_process_group("gloo", init_method=spec.init_method, rank=rank,
                            world_size=spec.world_size,
                            timeout=datetime.timedelta(seconds=spec.timeout_s))
    # waiting for the engine's next command (an idle server) or for a rank still
    # loading its shard is no failure: those go through a group without the step's
    # timeout (a dead peer still fails them at once: its connection closes)
    commands = dist.new_group(timeout=datetime.timedelta(seconds=COMMAND_WAIT_S))
    if spec.nnodes > 1:
        spec = _shared_spec(rank, spec, commands)
    groups = StageGroups.make(StagePlace(rank, spec.tp, spec.pp), spec.timeout_s,
                              COMMAND_WAIT_S, commands)
    try:
        runner, info = _build(rank, spec, groups)
        infos: list[Any] = [None] * spec.world_size
        dist.all_gather_object(infos, info, group=commands)
        if conn is not None:
            _send(conn, ("ready", infos))
        if spec.pp == 1:
            _serve(rank, runner, conn, commands)
        else:
            serve_stage(groups, runner, conn, spec.dtype, _send)
    except Exception:
        if conn is not None:
            _send(conn, ("error", traceback.format_exc()))
        raise
    finally:
        dist.destroy_process_group()


def _shared_spec(rank: int, spec: WorkerSpec, group: Any) -> WorkerSpec:
    """Rank 0's spec, on every rank. A rank on another node came up knowing only how
    to join the group and where its own copy of the checkpoint is: it reads that copy
    (the engine's weights file is on the engine's machine)."""
    box: list[Any] = [spec if rank == 0 else None]
    dist.broadcast_object_list(box, src=0, group=group)
    shared: WorkerSpec = box[0]
    if spec.weights_file is not None and Path(spec.weights_file).exists():
        return shared
    return dataclasses.replace(shared, model_path=spec.model_path, weights_file=None)


def _build(rank: int, spec: WorkerSpec, groups: StageGroups) -> tuple[Any, dict[str, Any]]:
    from kvscope.distributed.group import TPGroup
    from kvscope.distributed.parallel_layers import shard_model
    from kvscope.distributed.partition import partition
    from kvscope.distributed.pipeline import keep_stage, stage_layers
    from kvscope.model.loader import load_model
    from kvscope.runner.model_runner import ModelRunner
    from kvscope.worker.weights import read_weights

    start = time.perf_counter()
    if spec.weights_file is not None:
        full = read_weights(Path(spec.weights_file), spec.arch)
    else:
        full = load_model(spec.model_path, spec.dtype).model
    arch = full.arch
    if spec.arch is not None and arch != spec.arch:
        raise RuntimeError(f"rank {rank} read a different model from {spec.model_path} than "
                           f"the engine's ({arch} against {spec.arch})")
    place = groups.place
    plan = partition(arch.num_heads, arch.num_kv_heads, arch.intermediate_size,
                     arch.vocab_size, spec.tp)
    group = TPGroup(place.tp_rank, spec.tp, groups.tensor)
    model = shard_model(full, plan, place.tp_rank, group) if spec.tp > 1 else full
    del full
    layers = stage_layers(arch.num_layers, spec.pp)[place.stage]
    if spec.pp > 1:
        model = keep_stage(model, layers, place.is_first, place.is_last)
    runner = ModelRunner(model, spec.num_blocks, spec.block_size, spec.max_model_len,
                         spec.dtype, spec.num_swap_blocks)
    runner.tp_group = group
    shard = plan.shards[place.tp_rank]
    info = {"rank": rank, "pid": os.getpid(), "load_s": round(time.perf_counter() - start, 3),
            "stage": place.stage, "tp_rank": place.tp_rank, "layers": [layers.start, layers.stop],
            "q_heads": [shard.q_heads.start, shard.q_heads.stop],
            "kv_heads": [shard.kv_heads.start, shard.kv_heads.stop],
            "intermediate": [shard.intermediate.start, shard.intermediate.stop],
            "vocab": [shard.vocab.start, shard.vocab.stop], "split": plan.kind,
            "kv_pool_shape": list(runner.kv_pool.shape), "weights": _weight_shapes(model)}
    return runner, info


def _weight_shapes(model: Any) -> dict[str, list[int]]:
    """[rows, columns] of this rank's weights in one layer (every layer is alike)."""
    layer = model.layers[0]
    shapes = {"qkv_proj": list(layer.self_attn.qkv_proj.weight.shape),
              "o_proj": list(layer.self_attn.o_proj.weight.shape),
              "gate_up_proj": list(layer.mlp.gate_up_proj.weight.shape),
              "down_proj": list(layer.mlp.down_proj.weight.shape)}
    if model.embed_tokens is not None:  # a pipeline stage holds them only where it runs them
        shapes["embed_tokens"] = list(model.embed_tokens.weight.shape)
    if model.lm_head is not None:
        shapes["lm_head"] = list(model.lm_head.weight.shape)
    return shapes


def _serve(rank: int, runner: Any, conn: Connection | None, commands: Any) -> None:
    while True:
        box: list[Any] = [_receive(conn) if conn is not None else None]
        dist.broadcast_object_list(box, src=0, group=commands)
        command = box[0]
        if command[0] == "stop":
            return
        result = _run(runner, command)
        stats = runner.tp_group.take_stats()
        if conn is not None:
            _send(conn, ("ok", result, stats))


def _run(runner: Any, command: tuple) -> Any:
    kind, *args = command
    with torch.inference_mode():
        if kind == "execute":
            return runner.execute(*args)
        if kind == "decode_rows":
            return runner.forward_decode_rows(*args)
        if kind == "watch_layer":
            return _watch_layer(runner.model, *args)
    raise ValueError(f"unknown worker command {kind!r}")


def _watch_layer(model: Any, layer: int | None) -> list[Any]:
    """Make one layer's row-parallel linears keep their last call's partial sums (None:
    stop, and collect what they kept); returns every rank's record, on every rank."""
    record: dict[str, Any] = {}
    for index, decoder in enumerate(model.layers):
        for linear in (decoder.self_attn.o_proj, decoder.mlp.down_proj):
            if linear.watch:
                record[linear.name] = linear.watched
            linear.watch = index == layer
            linear.watched = None
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, record)
    return everyone


def _send(conn: Connection, message: tuple) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _receive(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


def die_with_parent() -> None:
    """End this process soon after the engine's process dies, however it dies (a
    SIGKILL included): a thread watches for this process being handed to another parent."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="kvscope-parent-watch", daemon=True).start()
