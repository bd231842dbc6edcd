"""Tensor parallelism across "machines": node 1 is a separate `kvscope serve
--nnodes 2 --node-rank 1` process on 127.0.0.1 running rank 1, which joins rank 0's
group at the master's address and loads its shard from its own copy of the model;
node 0 is the engine in this process with rank 0. Greedy fp32 output equals one
process's, and when the engine stops, node 1 ends by itself."""

from __future__ import annotations

import os
import subprocess
import sys

from kvscope import LLM, SamplingParams
from tests.server_harness import free_port

PROMPTS = ["The history of the printing press begins", "def quicksort(items):",
           "Three facts about the planet Mars:", "Once upon a time in a small village",
           "The best way to learn a language is"]
GREEDY = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)


def test_two_nodes_give_the_output_of_one_process(make_llm, loaded_fp32) -> None:
    expected = [o.outputs[0].token_ids for o in make_llm().generate(PROMPTS, GREEDY)]
    port = free_port()
    node1 = subprocess.Popen(
        [sys.executable, "-m", "kvscope.cli", "serve", "-tp", "2", "--nnodes", "2",
         "--node-rank", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
         "--dtype", "float32", "--quantization", "none"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        with LLM(dtype="float32", loaded=loaded_fp32, tensor_parallel_size=2, nnodes=2,
                 node_rank=0, master_addr="127.0.0.1", master_port=port,
                 kv_cache_memory=64 * 1024 * 1024, max_model_len=1024) as two_nodes:
            assert len(two_nodes.engine.executor.workers) == 1  # only rank 0 is local
            got = [o.outputs[0].token_ids for o in two_nodes.generate(PROMPTS, GREEDY)]
        assert got == expected
        assert node1.wait(60) == 0, node1.stderr.read().decode()[-2000:]
    finally:
        if node1.poll() is None:
            node1.kill()
            node1.wait(30)


def test_node_options_come_from_torchrun_or_plain_environment_variables():
    from kvscope.cli import node_defaults

    assert node_defaults({}) == {"nnodes": 1, "node_rank": 0, "master_addr": "127.0.0.1",
                                 "master_port": 29500}
    # what torchrun --nnodes 2 --nproc-per-node 1 sets in the second node's process
    torchrun = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "1", "RANK": "1",
                "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"}
    assert node_defaults(torchrun) == {"nnodes": 2, "node_rank": 1,
                                       "master_addr": "10.0.0.1", "master_port": 29400}
    assert node_defaults({**torchrun, "NNODES": "3", "NODE_RANK": "2"})["nnodes"] == 3
