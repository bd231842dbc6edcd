"""The CUDA graphs lesson's run: the same decode workload twice on fresh lab engines,
once through the Python layer loop and once through the decode stack
(model/decode_stack.py: every decoder layer of a decode step in one C++ call, the CPU
counterpart of replaying a captured CUDA graph).

Each step is timed as the engine times it (StepEnd: schedule, forward, sample,
update), with the runner's prepare time taken out of the forward, and the wall time
of the whole `engine.step()` around it. The kernel calls each step makes from Python
are counted, not estimated: while the run lasts, the layers' kernel entry points are
wrapped by counters that count on this thread only (calls from any other thread go
straight through). A GPU figure is computed from those counts and a stated
per-launch cost, and labelled so: nothing here ran on a GPU.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import Field

from kvscope.engine.llm_engine import LLMEngine
from kvscope.events import ListSink
from kvscope.model import decode_stack
from kvscope.model.layers import linear as linear_module
from kvscope.model.loader import LoadedModel
from kvscope.sampling_params import SamplingParams
from kvscope.scope.inside.roofline import gpu_roofline
from kvscope.scope.lab import LabRunRequest, build_lab_engine
from kvscope.scope.lab_limits import LabBudget, LabLimits
from kvscope.serve.protocol import StrictModel

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a small robot",
           "The three laws of motion say that", "A recipe for bread needs", "In 1969, the first",
           "The best way to learn a language is", "Rain falls when"]
# the kernels a layer calls from Python (linears are counted where `linear()` is called)
COUNTED = frozenset({"rms_norm", "add_rms_norm", "silu_and_mul", "rope_inplace", "write_kv",
                     "paged_decode_attention", "paged_prefill_attention", "q4_linear",
                     "q4_linear_i8", "q8_linear"})
LAUNCH_US = 5.0  # the assumed cost of one kernel launch on a GPU (see ASSUMPTIONS)
ASSUMPTIONS = [
    f"~{LAUNCH_US:g} µs of CPU time per kernel launch: a typical published figure for "
    "launching one CUDA kernel from PyTorch (the driver's own launch takes a few µs; "
    "framework code adds more)",
    "one eager step launches one kernel per kernel call the layer loop made here, counted "
    "on this run; a captured graph replays them all with one launch",
    "the GPU cannot start a kernel before the CPU has launched it, so an eager step lasts "
    "at least its launches, and any step at least its roofline time",
    "roofline time: the bf16 weights and the batch's K/V read once from HBM at the H100 "
    "SXM's published 3.35 TB/s (a lower bound, decode being memory-bound)",
]


class LaunchOverheadRequest(StrictModel):
    batch_size: int = Field(4, ge=1, le=8)  # requests decoding together
    steps: int = Field(32, ge=8, le=64)  # tokens each request generates


class _Counter:
    """Counts calls made on one thread while `on`."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.calls = 0
        self.stack_runs = 0

    def wrap(self, fn: Callable[..., Any], stack: bool = False) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == self.thread:
                self.calls += 1
                self.stack_runs += stack
            return fn(*args, **kwargs)
        return counted


class _CountingKernels:
    """The kernels module as the layers see it, with the COUNTED entry points counted."""

    def __init__(self, kernels: Any, counter: _Counter) -> None:
        self._kernels, self._counter = kernels, counter

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._kernels, name)
        return self._counter.wrap(value) if name in COUNTED else value


class _CountingStack:
    def __init__(self, stack: decode_stack.DecodeStack, counter: _Counter) -> None:
        self.num_layers = stack.num_layers
        self.run = counter.wrap(stack.run, stack=True)


@contextlib.contextmanager
def _counting(counter: _Counter) -> Iterator[None]:
    """Route the layers' kernel calls and linears through the counter for the run."""
    users = decode_stack._KERNEL_USERS
    saved = [(m, m.cpu_kernels) for m in users]
    saved_linear = linear_module.linear
    for module, original in saved:
        def proxied(original: Callable[[], Any] = original) -> Any:
            kernels = original()
            return None if kernels is None else _CountingKernels(kernels, counter)
        module.cpu_kernels = proxied  # type: ignore[attr-defined]
    linear_module.linear = counter.wrap(saved_linear)
    try:
        yield
    finally:
        for module, original in saved:
            module.cpu_kernels = original  # type: ignore[attr-defined]
        linear_module.linear = saved_linear


@contextlib.contextmanager
def _layers_as(loaded: LoadedModel, mode: str, counter: _Counter) -> Iterator[None]:
    """The model's decode steps through the Python loop or the stack (counted), put
    back as they were afterwards (the serving engine shares these weights)."""
    model = loaded.model
    saved = model._decode_stack, model._decode_stack_built
    try:
        if mode == "loop":
            model._decode_stack, model._decode_stack_built = None, True
        else:
            model._decode_stack_built = False
            stack = model.decode_stack()
            if stack is None:
                raise ValueError("the decode stack does not run this model here (it needs "
                                 "the C++ kernels and plain dense or quantized linears)")
            model._decode_stack = _CountingStack(stack, counter)  # type: ignore[assignment]
        yield
    finally:
        model._decode_stack, model._decode_stack_built = saved


def _engine(loaded: LoadedModel, req: LaunchOverheadRequest, sink: ListSink) -> LLMEngine:
    lab = LabRunRequest(prompts=PROMPTS[:req.batch_size], max_tokens=req.steps,
                        num_blocks=64, block_size=16, max_num_seqs=8,
                        enable_prefix_caching=False)
    return build_lab_engine(loaded, lab, sink)


def _run_mode(loaded: LoadedModel, req: LaunchOverheadRequest, mode: str,
              budget: LabBudget) -> dict[str, Any]:
    sink = ListSink()
    engine = _engine(loaded, req, sink)
    counter = _Counter()
    params = SamplingParams(temperature=0.0, max_tokens=req.steps, ignore_eos=True)
    for i, prompt in enumerate(PROMPTS[:req.batch_size]):
        engine.add_request(str(i), prompt, params)
    runner = engine.runner
    assert runner is not None
    rows: list[dict[str, Any]] = []
    outputs: dict[str, list[int]] = {}
    with _layers_as(loaded, mode, counter), _counting(counter):
        while engine.has_unfinished_requests():
            budget.before_step(engine)
            calls, runs, events = counter.calls, counter.stack_runs, len(sink.events)
            start = time.perf_counter()
            for out in engine.step():
                if out.finished:
                    outputs[out.request_id] = list(out.outputs[0].token_ids)
            wall = time.perf_counter() - start
            end = next(e for e in reversed(sink.events[events:]) if e.kind == "step_end")
            prepare_ms = runner.last_prepare_s * 1e3
            rows.append({
                "step": len(rows), "decode_only": all(c.phase == "decode" for c in end.batch),
                "num_tokens": end.num_tokens, "wall_ms": wall * 1e3,
                "schedule_ms": end.schedule_ms, "prepare_ms": prepare_ms,
                "forward_ms": end.forward_ms - prepare_ms,
                "sample_update_ms": end.sample_ms + end.update_ms,
                "kernel_calls": counter.calls - calls, "stack_runs": counter.stack_runs - runs})
    budget.engine_done(engine)
    decodes = [r for r in rows if r["decode_only"]]
    median = {key: statistics.median(r[key] for r in decodes)
              for key in ("wall_ms", "schedule_ms", "prepare_ms", "forward_ms",
                          "sample_update_ms", "kernel_calls")}
    prompt_lens = [len(engine.tokenize(p)[1]) for p in PROMPTS[:req.batch_size]]
    return {"mode": mode, "num_steps": len(rows), "prompt_tokens": prompt_lens,
            "num_decode_steps": len(decodes),
            "stack_runs": sum(r["stack_runs"] for r in rows), "steps": rows,
            "median": median, "token_ids": [outputs[str(i)] for i in range(req.batch_size)]}


def _projection(loaded: LoadedModel, req: LaunchOverheadRequest, prompt_lens: list[int],
                loop_calls: float, stack_calls: float) -> dict[str, Any]:
    """What a CUDA graph replay would remove from a decode step on an H100: computed
    from the counted launches and the assumptions above, not measured."""
    gpu = gpu_roofline()
    arch = loaded.arch
    weight_bytes = arch.num_parameters() * 2
    context = statistics.mean(prompt_lens) + req.steps / 2  # a decode step's mean context
    kv_bytes = req.batch_size * context * arch.kv_bytes_per_token(2)
    roofline_us = (weight_bytes + kv_bytes) / (gpu["bandwidth_gbs"] * 1e9) * 1e6
    eager_launch_us = loop_calls * LAUNCH_US
    graph_launch_us = stack_calls * LAUNCH_US
    eager_us = max(eager_launch_us, roofline_us)
    graph_us = max(graph_launch_us, roofline_us)
    return {"measured": False, "gpu": gpu["name"], "launch_us": LAUNCH_US,
            "eager_launches": loop_calls, "graph_launches": stack_calls,
            "weight_bytes": weight_bytes, "kv_bytes": round(kv_bytes),
            "roofline_us": round(roofline_us, 1), "eager_launch_us": round(eager_launch_us, 1),
            "eager_step_us": round(eager_us, 1), "graph_step_us": round(graph_us, 1),
            "removed_share": round(1 - graph_us / eager_us, 4), "assumptions": ASSUMPTIONS,
            "source": "computed from the launches counted on this run, an assumed per-launch "
                      "cost and the H100's published bandwidth; not measured"}


def launch_overhead_lesson(loaded: LoadedModel, req: LaunchOverheadRequest,
                           budget: LabBudget | None = None) -> dict[str, Any]:
    """Both runs, their per-step times and kernel calls, whether their greedy tokens
    agree, the measured share of a decode step the stack removed, and the GPU figure."""
    budget = budget or LabBudget(LabLimits())
    loop = _run_mode(loaded, req, "loop", budget)
    stack = _run_mode(loaded, req, "stack", budget)
    lw, sw = loop["median"]["wall_ms"], stack["median"]["wall_ms"]
    return {
        "batch_size": req.batch_size, "steps": req.steps, "num_layers": loaded.arch.num_layers,
        "loop": loop, "stack": stack,
        "same_tokens": loop["token_ids"] == stack["token_ids"],
        "removed_ms": round(lw - sw, 3), "removed_share": round((lw - sw) / lw, 4),
        "calls_per_layer": round((loop["median"]["kernel_calls"]
                                  - stack["median"]["kernel_calls"] + 1)
                                 / loaded.arch.num_layers, 2),
        "projection": _projection(loaded, req, loop["prompt_tokens"],
                                  loop["median"]["kernel_calls"],
                                  stack["median"]["kernel_calls"]),
    }
