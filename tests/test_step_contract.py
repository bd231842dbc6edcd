"""The step contract: what the scheduler hands the model runner, and what comes back,
is plain data (ids, numbers, tensors) that pickles, so the same step can go to every
worker process; the runner imports nothing of the scheduler but that contract."""

from __future__ import annotations

import ast
import dataclasses
import pickle
from pathlib import Path

import torch

from kvscope import SamplingParams
from kvscope.request import Request
from kvscope.sched.output import ModelRunnerOutput, SchedulerOutput

RUNNER = Path(__file__).resolve().parent.parent / "kvscope" / "runner" / "model_runner.py"


def holds_a_request(value) -> bool:
    if isinstance(value, Request):
        return True
    if dataclasses.is_dataclass(value):
        return any(holds_a_request(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, list | tuple):
        return any(holds_a_request(v) for v in value)
    return False


def test_a_real_step_pickles_and_holds_no_request(make_llm):
    llm = make_llm(max_num_batched_tokens=40)
    engine = llm.engine
    seen: list[tuple[SchedulerOutput, ModelRunnerOutput]] = []
    execute = engine.runner.execute

    def recording(out: SchedulerOutput) -> ModelRunnerOutput:
        result = execute(out)
        seen.append((out, result))
        return result

    engine.runner.execute = recording
    params = SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=1)
    engine.add_request("a", "The history of the printing press begins " * 8, params)
    engine.add_request("b", "Paris is the capital of", SamplingParams(max_tokens=3))
    while engine.has_unfinished_requests():
        engine.step()
    assert len(seen) >= 4
    first, first_result = seen[0]
    assert [s.request_id for s in first.scheduled] == ["a"]
    assert first.scheduled[0].num_tokens == 40  # the first chunk of a chunked prefill
    assert not first.scheduled[0].samples and not first_result.sampled
    for out, result in seen:
        assert not holds_a_request(out) and not holds_a_request(result)
        again = pickle.loads(pickle.dumps(out))
        assert again == out
        back = pickle.loads(pickle.dumps(result))
        assert back.sampled == result.sampled
        assert torch.equal(back.logits, result.logits)
        assert [p.request_id for p in back.prompt_logits] == \
            [p.request_id for p in result.prompt_logits]
        assert len(pickle.dumps(out)) < 4096
    assert first_result.prompt_logits[0].request_id == "a"
    assert first_result.prompt_logits[0].start == 0


def test_the_runner_imports_only_the_contract_of_the_scheduler():
    tree = ast.parse(RUNNER.read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    kvscope = {m for m in modules if m and m.startswith("kvscope.")}
    assert {m for m in kvscope if m.startswith("kvscope.sched")} == {"kvscope.sched.output"}
    assert "kvscope.request" not in kvscope
    assert not {m for m in kvscope if m.startswith("kvscope.engine")}
