"""The Ray executor: the same tensor- and pipeline-parallel workers as Ray actors in a
placement group (a local Ray instance here). Greedy fp32 output equals one process's
(so the multiproc executor's, which equals it too: test_tensor_parallel.py and
test_pipeline_parallel.py); shutdown ends every actor and frees the placement group.
Ray is the optional extra kvscope[ray]; scripts/test installs it, so CI runs this."""

from __future__ import annotations

import pytest

from kvscope import LLM, SamplingParams
from kvscope.config import ConfigError
from tests.test_tensor_parallel import PROMPTS, assert_every_block_free, token_ids

ray = pytest.importorskip("ray", reason="Ray is the optional extra kvscope[ray] "
                                        "(scripts/test installs it)")

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def test_ray_actors_serve_like_one_process(make_llm, loaded_fp32):
    expected = token_ids(make_llm(max_model_len=512).generate(PROMPTS, GREEDY))
    try:
        with LLM(dtype="float32", loaded=loaded_fp32, tensor_parallel_size=2,
                 kv_cache_memory=64 << 20, max_model_len=512,
                 distributed_executor_backend="ray") as llm:
            executor = llm.engine.executor
            assert type(executor).__name__ == "RayExecutor"
            assert [r["rank"] for r in executor.ranks] == [0, 1]
            assert [r["kv_heads"] for r in executor.ranks] == [[0, 2], [2, 3]]
            # the ranks are the actors' processes, placed by Ray
            assert [w.pid for w in executor.workers] == [r["pid"] for r in executor.ranks]
            assert token_ids(llm.generate(PROMPTS, GREEDY)) == expected
            assert_every_block_free(llm)
            workers, group = executor.workers, executor._group
        assert [w.poll() for w in workers] == [0, 0]  # both ranks ended cleanly
        assert ray.util.placement_group_table(group)["state"] == "REMOVED"
    finally:
        ray.shutdown()


def test_ray_options_that_cannot_work_fail_before_starting(loaded_fp32):
    with pytest.raises(ConfigError, match="starts the workers of"):
        LLM(dtype="float32", loaded=loaded_fp32, distributed_executor_backend="ray")
    with pytest.raises(ConfigError, match="leave nnodes at 1"):
        LLM(dtype="float32", loaded=loaded_fp32, tensor_parallel_size=2, nnodes=2,
            distributed_executor_backend="ray")
    with pytest.raises(ConfigError, match="must be mp or ray"):
        LLM(dtype="float32", loaded=loaded_fp32, tensor_parallel_size=2,
            distributed_executor_backend="dask")
