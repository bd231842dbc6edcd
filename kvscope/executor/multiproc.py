"""Tensor (and pipeline) parallelism over worker processes: one per rank, all in one
torch.distributed group (gloo on CPU).

The engine keeps the scheduler, the KV manager (one set of block ids for every rank)
and the sampler; each step's SchedulerOutput goes to rank 0 over a local connection, rank 0
broadcasts it to the others, every rank runs its shard of the forward pass, and rank 0
sends back the logits (the LM head's columns already gathered). While it waits the
engine watches every worker: one that dies, or a step that raises, makes the executor
unusable at once (ExecutorError), and it ends the remaining workers, so no process is
left behind. With pipeline stages (worker/pipeline_stage.py) rank 0 takes the step for
the first stage, the last stage's logits come back through rank 0, and the engine may
`submit` several steps before it `collect`s the oldest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import secrets
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection, Listener
from typing import Any

import torch

from kvscope.executor.base import ExecutorError
from kvscope.sched.output import ModelRunnerOutput, SchedulerOutput
from kvscope.worker.worker import AUTHKEY_ENV, WorkerSpec

logger = logging.getLogger(__name__)

POLL_S = 0.02  # how often a waiting engine looks at its workers' health
STARTUP_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 10.0


class MultiprocExecutor:
    def __init__(self, spec: WorkerSpec, progress: bool = False) -> None:
        self.spec = spec
        self._error: str | None = None
        self._last_stats: tuple[int, float] = (0, 0.0)
        self._last_stage_times: list[tuple] = []
        start = time.perf_counter()
        authkey = secrets.token_bytes(16)
        listener = Listener((self.listen_host(), 0), authkey=authkey)
        host, port = listener.address
        self.workers: list[Any] = []
        try:
            self.workers = self.start_workers(f"{host}:{port}", authkey)
            self._conn = self._connect(listener)
            self.ranks: list[dict[str, Any]] = self._receive(STARTUP_TIMEOUT_S, "start")
        except ExecutorError:
            self.shutdown()
            raise
        finally:
            listener.close()
        self.startup_s = time.perf_counter() - start
        for info in self.ranks:
            message = (f"rank {info['rank']} (pid {info['pid']}, stage {info['stage']}: layers "
                       f"{info['layers'][0]}-{info['layers'][1] - 1}): query heads "
                       f"{info['q_heads'][0]}-{info['q_heads'][1] - 1}, KV heads "
                       f"{info['kv_heads'][0]}-{info['kv_heads'][1] - 1}, loaded in "
                       f"{info['load_s']:.1f} s")
            if progress:
                print(message, file=sys.stderr, flush=True)
            logger.info(message)

    def listen_host(self) -> str:
        """Where the workers reach the engine."""
        return "127.0.0.1"

    def start_workers(self, address: str, authkey: bytes) -> list[Any]:
        """This node's ranks as processes (`python -m kvscope.worker`, fresh
        interpreters: nothing of this process, its threads or its __main__, is copied
        into them); the other nodes start theirs (distributed/nodes.py)."""
        env = {**os.environ, AUTHKEY_ENV: authkey.hex()}
        return [subprocess.Popen(
            [sys.executable, "-m", "kvscope.worker", "--rank", str(rank), "--address", address],
            env=env, stdin=subprocess.DEVNULL)
            for rank in range(self.spec.world_size // self.spec.nnodes)]

    def _connect(self, listener: Listener) -> Connection:
        """Accept every worker's connection, send each its spec; keep rank 0's."""
        accepted: list[Connection] = []
        done = threading.Event()

        def accept_all() -> None:
            with contextlib.suppress(OSError):
                for _ in self.workers:
                    accepted.append(listener.accept())
            done.set()

        threading.Thread(target=accept_all, name="kvscope-tp-accept", daemon=True).start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not done.wait(POLL_S):
            self._check_workers()
            if time.monotonic() > deadline:
                self._fail("the workers did not connect in time")
        rank0 = None
        for conn in accepted:
            rank = pickle.loads(conn.recv_bytes())
            conn.send_bytes(pickle.dumps(self.spec))
            if rank == 0:
                rank0 = conn
            else:
                conn.close()
        assert rank0 is not None
        return rank0

    @property
    def is_alive(self) -> bool:
        return self._error is None and all(w.poll() is None for w in self.workers)

    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        return self._call(("execute", out))

    def submit(self, out: SchedulerOutput) -> None:
        """Start a step without waiting for it (pipeline parallelism keeps several in
        flight); `collect` gives back the oldest one's result."""
        self._send(("execute", out))

    def collect(self) -> ModelRunnerOutput:
        return self._answer("execute")

    def stage_times(self) -> list[tuple]:
        """(stage, start, end, collectives, collective seconds) of each stage for the
        latest collected step (perf_counter times on the stage's machine)."""
        return self._last_stage_times

    def forward_decode_rows(self, token_ids: list[int], positions: list[int],
                            block_tables: list[list[int]], num_layers: int) -> torch.Tensor:
        return self._call(("decode_rows", token_ids, positions, block_tables, num_layers))

    def collective_stats(self) -> tuple[int, float]:
        return self._last_stats

    def watch_layer(self, layer: int | None) -> list[Any]:
        """Start keeping `layer`'s partial sums on every rank (None: stop); returns what
        each rank kept since the previous call (the scope's tensor-parallel lesson)."""
        return self._call(("watch_layer", layer))

    def shutdown(self) -> None:
        """Stop every worker: politely, then by force; none is left running."""
        conn = getattr(self, "_conn", None)
        if conn is not None and self._error is None and self.is_alive:
            with contextlib.suppress(OSError):
                conn.send_bytes(pickle.dumps(("stop",)))
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(max(0.0, deadline - time.monotonic()))
        for worker in self.workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(STOP_TIMEOUT_S)
        if conn is not None:
            conn.close()
        if self._error is None:
            self._error = "shut down"

    def _call(self, command: tuple) -> Any:
        self._send(command)
        return self._answer(command[0])

    def _send(self, command: tuple) -> None:
        if self._error is not None:
            raise ExecutorError(f"the model's workers are not running ({self._error})")
        try:
            self._conn.send_bytes(pickle.dumps(command, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as exc:
            self._fail(f"rank 0 cannot be reached: {exc}")

    def _answer(self, what: str) -> Any:
        result, self._last_stats, *stage_times = self._receive(None, what)
        self._last_stage_times = stage_times[0] if stage_times else []
        return result

    def _check_workers(self) -> None:
        dead = [(rank, w.returncode) for rank, w in enumerate(self.workers)
                if w.poll() is not None]
        if dead:
            self._fail(", ".join(f"rank {rank} exited with code {code}" for rank, code in dead))

    def _receive(self, timeout: float | None, what: str) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._conn.poll(POLL_S):
            self._check_workers()
            if deadline is not None and time.monotonic() > deadline:
                self._fail(f"no answer to {what!r} after {timeout:.0f} s")
        try:
            status, *rest = pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError) as exc:
            self._fail(f"rank 0 closed its pipe ({exc!r})")
        if status == "error":  # often a collective that lost a peer: name the dead one
            logger.error("tensor-parallel rank 0 raised:\n%s", rest[0])
            time.sleep(POLL_S)
            self._check_workers()
            self._fail(f"rank 0 raised {rest[0].strip().splitlines()[-1]}")
        if status == "ready":
            return rest[0]
        return rest  # the result, the collective stats (and, pipelined, stage times)

    def _fail(self, why: str) -> None:
        self._error = why
        logger.error("tensor-parallel executor failed: %s", why)
        self.shutdown()
        raise ExecutorError(f"a tensor-parallel worker failed: {why}")


def free_tcp_init_method() -> str:
    """A rendezvous address for torch.distributed on a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"
