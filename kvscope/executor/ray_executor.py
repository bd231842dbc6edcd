"""The tensor/pipeline-parallel workers as Ray actors, for clusters that already run Ray
(`--distributed-executor-backend ray`; `pip install kvscope[ray]`).

A placement group reserves one bundle per rank (PACK: on as few nodes as fit); one
actor per bundle runs the same worker as a process of MultiprocExecutor would: it
connects back to the engine, takes its spec, joins the ranks' torch.distributed group
and serves steps. The group meets at rank 0's node (its actor picks the port), so
the ranks may sit on several nodes. Everything else, the step protocol and the health
checks included, is MultiprocExecutor's: an actor's run ending (it died, or its node
went) fails the executor at once, and shutdown kills every actor and frees the group.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
from typing import Any

from kvscope.executor.base import ExecutorError
from kvscope.executor.multiproc import STARTUP_TIMEOUT_S, MultiprocExecutor

try:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
except ImportError:  # the optional extra is not installed
    ray = None


def ray_missing() -> str | None:
    """Why the Ray executor cannot run here, or None."""
    return None if ray is not None else ("the Ray executor needs Ray: pip install "
                                         "'kvscope[ray]'")


class RayWorker:
    """One rank, in a Ray actor."""

    def node(self) -> tuple[str, int, int]:
        """(this node's address, a free port on it, this actor's pid)."""
        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return ray.util.get_node_ip_address(), port, os.getpid()

    def run(self, rank: int, address: str, authkey: bytes) -> None:
        from kvscope.worker.__main__ import run_connected

        run_connected(rank, address, authkey)


class ActorHandle:
    """A rank's actor with the little of subprocess.Popen that the executor uses."""

    def __init__(self, actor: Any, done: Any, pid: int) -> None:
        self.actor = actor
        self.done = done  # the ObjectRef of its run(): ready once the rank ended
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            ready, _ = ray.wait([self.done], timeout=0)
            if ready:
                try:
                    ray.get(self.done)
                    self.returncode = 0
                except Exception:  # the rank raised, or its actor died
                    self.returncode = 1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        ray.wait([self.done], timeout=timeout)
        code = self.poll()
        if code is None:
            raise subprocess.TimeoutExpired(f"ray actor {self.pid}", timeout or 0)
        return code

    def kill(self) -> None:
        ray.kill(self.actor, no_restart=True)


class RayExecutor(MultiprocExecutor):
    def listen_host(self) -> str:
        _ensure_ray()
        return ray.util.get_node_ip_address()

    def start_workers(self, address: str, authkey: bytes) -> list[Any]:
        spec = self.spec
        self._group = placement_group([{"CPU": spec.threads}] * spec.world_size,
                                      strategy="PACK")
        ready, _ = ray.wait([self._group.ready()], timeout=STARTUP_TIMEOUT_S)
        if not ready:
            remove_placement_group(self._group)
            raise ExecutorError(f"Ray could not place {spec.world_size} ranks of "
                                f"{spec.threads} CPUs each")
        actor_class = ray.remote(num_cpus=spec.threads)(RayWorker)
        actors = [actor_class.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            self._group, placement_group_bundle_index=rank)).remote()
            for rank in range(spec.world_size)]
        nodes = ray.get([a.node.remote() for a in actors], timeout=STARTUP_TIMEOUT_S)
        host, port, _ = nodes[0]  # the ranks meet at rank 0's node
        self.spec = dataclasses.replace(spec, init_method=f"tcp://{host}:{port}")
        return [ActorHandle(actor, actor.run.remote(rank, address, authkey), pid)
                for rank, (actor, (_, _, pid)) in enumerate(zip(actors, nodes, strict=True))]

    def shutdown(self) -> None:
        super().shutdown()
        group = getattr(self, "_group", None)
        if group is not None:
            remove_placement_group(group)
            self._group = None


def _ensure_ray() -> None:
    """Join the cluster at $RAY_ADDRESS, or start a local one with this machine's CPUs."""
    if ray is None:
        raise ExecutorError(ray_missing() or "")
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
