"""`python -m kvscope.worker --rank R --address HOST:PORT`: one tensor-parallel rank,
started by the engine's MultiprocExecutor (the key to its address comes in the
environment). It connects back, says its rank, receives its WorkerSpec and runs."""

from __future__ import annotations

import argparse
import os
import pickle
from multiprocessing.connection import Client

from kvscope.worker.worker import AUTHKEY_ENV, worker_main


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m kvscope.worker")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--address", required=True, help="the engine's HOST:PORT")
    args = parser.parse_args()
    host, port = args.address.rsplit(":", 1)
    conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ.pop(AUTHKEY_ENV)))
    conn.send_bytes(pickle.dumps(args.rank))
    spec = pickle.loads(conn.recv_bytes())
    if args.rank != 0:  # only rank 0 talks to the engine; the rest follow it
        conn.close()
    worker_main(args.rank, spec, conn if args.rank == 0 else None)


if __name__ == "__main__":
    main()
