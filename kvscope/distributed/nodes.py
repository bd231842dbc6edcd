"""A node that runs only worker ranks: `kvscope serve -tp T [-pp S] --nnodes N
--node-rank R --master-addr A --master-port P` with R > 0.

Node 0 runs the engine (scheduler, KV manager, sampler, the API) and its ranks; node R
starts ranks R·W/N … (R+1)·W/N − 1 of the W = T·S, which join the same
torch.distributed group at A:P, take rank 0's spec from it and load their shards from
this node's copy of the model. They follow rank 0's commands until the engine stops
them; this process ends with them. The rendezvous has no authentication (like
torchrun's): use it on a network you trust.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import torch

from kvscope.config import EngineConfig
from kvscope.model.loader import resolve_model_path

logger = logging.getLogger("kvscope.nodes")


def local_ranks(config: EngineConfig) -> range:
    per_node = config.world_size // config.nnodes
    return range(config.node_rank * per_node, (config.node_rank + 1) * per_node)


def run_ranks_of_this_node(config: EngineConfig) -> int:
    """Start this node's ranks and wait for them; 0 when every one ended cleanly."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ranks = local_ranks(config)
    threads = max(1, torch.get_num_threads() // len(ranks))
    address = f"tcp://{config.master_addr}:{config.master_port}"
    model = str(resolve_model_path(config.model))
    workers = [subprocess.Popen(
        [sys.executable, "-m", "kvscope.worker", "--rank", str(rank), "--join", address,
         "--world-size", str(config.world_size), "--nnodes", str(config.nnodes),
         "--model", model, "--dtype", str(config.dtype).removeprefix("torch."),
         "--threads", str(threads)], stdin=subprocess.DEVNULL) for rank in ranks]
    logger.info("node %d of %d: tensor-parallel ranks %d-%d joining %s", config.node_rank,
                config.nnodes, ranks.start, ranks.stop - 1, address)
    try:
        codes = [w.wait() for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                w.wait(10)
    logger.info("node %d: ranks ended with %s", config.node_rank, codes)
    return 0 if all(code == 0 for code in codes) else 1
