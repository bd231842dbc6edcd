"""One rank's loop in a pipeline-parallel model (distributed/pipeline.py).

A rank of the first stage gets each command from the engine (rank 0 reads it from its
pipe and broadcasts it within the stage); a rank of a later stage gets it, with the
activations, from the same tensor-parallel rank of the stage before. Each runs its
layers and hands the step on; tensor-parallel rank 0 of the last stage sends the
logits to rank 0, whose relay thread passes them to the engine. So rank 0 takes the
next step while the later stages still compute the previous one.
"""

from __future__ import annotations

import datetime
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.distributed as dist

from kvscope.distributed.pipeline import StageLink, StageMessage, StagePlace


@dataclass(slots=True)
class StageGroups:
    """The process groups one rank takes part in. Every rank creates every group, in
    the same order (torch.distributed requires it)."""

    place: StagePlace
    tensor: Any  # this stage's tensor-parallel ranks, with the step timeout
    commands: Any  # the same ranks, waiting for the next command without one
    links: Any  # every rank: stage-to-stage activations
    results: Any  # every rank: the last stage's logits back to rank 0

    @classmethod
    def make(cls, place: StagePlace, step_timeout_s: float, command_wait_s: float,
             commands: Any) -> StageGroups:
        """`commands`: every rank's group for commands (one stage: all the groups)."""
        if place.pp == 1:
            return cls(place, dist.group.WORLD, commands, None, None)
        long_wait = datetime.timedelta(seconds=command_wait_s)
        step_wait = datetime.timedelta(seconds=step_timeout_s)
        tensor = command_groups = None
        for stage in range(place.pp):
            ranks = place.stage_ranks(stage)
            t = dist.new_group(ranks, timeout=step_wait)
            c = dist.new_group(ranks, timeout=long_wait)
            if stage == place.stage:
                tensor, command_groups = t, c
        links = dist.new_group(timeout=long_wait)
        results = dist.new_group(timeout=long_wait)
        return cls(place, tensor, command_groups, links, results)


def serve_stage(groups: StageGroups, runner: Any, conn: Connection | None,
                dtype: torch.dtype, send: Callable[[Connection, tuple], None]) -> None:
    """Run steps until a stop comes down the pipeline."""
    place = groups.place
    hidden_size = runner.model.arch.hidden_size
    link = StageLink(groups.links, dtype, hidden_size)
    results = StageLink(groups.results, dtype, hidden_size)
    last_driver = place.stage_ranks(place.pp - 1)[0]
    relay = None
    if conn is not None:  # rank 0
        lock = threading.Lock()
        relay = threading.Thread(target=_relay, name="kvscope-pp-relay", daemon=True,
                                 args=(results, last_driver, conn, send, lock))
        relay.start()
        send = _locked(send, lock)
    while True:
        message = _next_message(place, groups, link, conn)
        kind = message.command[0]
        if kind == "stop":
            _pass_stop(place, link, results)
            if relay is not None:
                relay.join()
            return
        if kind != "execute":
            raise ValueError(f"a pipeline-parallel worker runs only steps; got {kind!r}")
        timings, produced = _run_step(place, runner, message)
        if not place.is_last:
            link.send(StageMessage(message.command, timings, *produced), place.next_rank)
        elif place.tp_rank == 0:
            results.send(StageMessage(("ok", produced, _stats(timings), timings)), 0)


def _pass_stop(place: StagePlace, link: StageLink, results: StageLink) -> None:
    """Hand the stop on (the last stage tells rank 0's relay) and let the sends finish."""
    if not place.is_last:
        link.send(StageMessage(("stop",)), place.next_rank)
    elif place.tp_rank == 0:
        results.send(StageMessage(("stopped",)), 0)
    link.wait_sent()
    results.wait_sent()


def _next_message(place: StagePlace, groups: StageGroups, link: StageLink,
                  conn: Connection | None) -> StageMessage:
    if not place.is_first:
        return link.receive(place.previous_rank)
    box: list[Any] = [_receive(conn) if conn is not None else None]
    if place.tp > 1:
        dist.broadcast_object_list(box, src=0, group=groups.commands)
    return StageMessage(box[0])


def _run_step(place: StagePlace, runner: Any, message: StageMessage
              ) -> tuple[list[tuple], Any]:
    """This stage's layers for the step: the timings so far with this stage's, and
    what it produced ((hidden, residual), or the last stage's ModelRunnerOutput)."""
    start = time.perf_counter()
    carried = None if message.hidden is None else (message.hidden, message.residual)
    with torch.inference_mode():
        produced = runner.execute_stage(message.command[1], carried, last=place.is_last)
    collectives, collective_s = runner.tp_group.take_stats()
    timings = [*message.timings, (place.stage, start, time.perf_counter(), collectives,
                                  collective_s)]
    return timings, produced


def _stats(timings: list[tuple]) -> tuple[int, float]:
    """Collectives of the step, summed over its stages."""
    return sum(t[3] for t in timings), sum(t[4] for t in timings)


def _relay(results: StageLink, src: int, conn: Connection,
           send: Callable[[Connection, tuple], None], lock: threading.Lock) -> None:
    """Rank 0's thread: the last stage's answers, in step order, to the engine."""
    while True:
        reply = results.receive(src).command
        if reply[0] == "stopped":
            return
        with lock:
            send(conn, reply)


def _locked(send: Callable[[Connection, tuple], None],
            lock: threading.Lock) -> Callable[[Connection, tuple], None]:
    def locked_send(conn: Connection, message: tuple) -> None:
        with lock:
            send(conn, message)
    return locked_send


def _receive(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())
