"""`python -m kvscope.worker --rank R --address HOST:PORT`: one tensor-parallel rank,
started by the engine's MultiprocExecutor (the key to its address comes in the
environment). It connects back, says its rank, receives its WorkerSpec and runs.

`python -m kvscope.worker --rank R --join tcp://HOST:PORT --world-size W --nnodes N
--model PATH ...`: a rank on another machine (started by `kvscope serve --node-rank`,
distributed/nodes.py). It joins the ranks' group at the master's address, receives
rank 0's WorkerSpec over it, and loads its shard from its own copy of the model.
"""

from __future__ import annotations

import argparse
import os
import pickle
from multiprocessing.connection import Client

from kvscope.config import parse_dtype
from kvscope.worker.worker import AUTHKEY_ENV, WorkerSpec, worker_main


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m kvscope.worker")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--address", help="the engine's HOST:PORT (a rank on its machine)")
    parser.add_argument("--join", help="the ranks' rendezvous, tcp://HOST:PORT (another node)")
    parser.add_argument("--world-size", type=int)
    parser.add_argument("--nnodes", type=int)
    parser.add_argument("--model")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.join is not None:
        worker_main(args.rank, _joining_spec(args), None)
        return
    run_connected(args.rank, args.address, bytes.fromhex(os.environ.pop(AUTHKEY_ENV)))


def run_connected(rank: int, address: str, authkey: bytes) -> None:
    """Connect back to the engine at HOST:PORT, say the rank, take the spec, run (a
    Ray worker actor runs this too)."""
    host, port = address.rsplit(":", 1)
    conn = Client((host, int(port)), authkey=authkey)
    conn.send_bytes(pickle.dumps(rank))
    spec = pickle.loads(conn.recv_bytes())
    if rank != 0:  # only rank 0 talks to the engine; the rest follow it
        conn.close()
    worker_main(rank, spec, conn if rank == 0 else None)


def _joining_spec(args: argparse.Namespace) -> WorkerSpec:
    """Enough to join the group; the rest comes from rank 0 once joined."""
    return WorkerSpec(args.model, parse_dtype(args.dtype), num_blocks=0, block_size=0,
                      max_model_len=0, num_swap_blocks=0, world_size=args.world_size,
                      init_method=args.join, threads=args.threads, nnodes=args.nnodes)


if __name__ == "__main__":
    main()
