"""One point of the Tuning Lab: a short serving workload through a fresh engine with
one setting of the engine's knobs, timed the way `kvscope bench serve` times a server.

`measure_setting` is the one function that measures a setting. `kvscope bench sweep`
(sweep.py) calls it for every point of a grid, and the scope's Tuning Lab route calls
it for the setting a reader picks, so a live point and a recorded point differ only in
the setting (and the machine's noise), never in how they were measured.

The engine runs in this process, not behind HTTP: requests are added to an `LLMEngine`
at their (Poisson, seeded) arrival times between two steps, and every step that gives a
request new tokens counts as one streamed chunk arriving when the step ends. A request
that arrives while a step runs waits for that step, as it would in a server. TTFT, TPOT,
ITL and throughput are then summarized by the same code as `kvscope bench serve`
(serve_stats.py). What the HTTP layer adds (JSON, SSE framing, the event loop) is left
out on purpose: the knobs act on the engine, and its loop is what they move.
"""

from __future__ import annotations

import math
import os
import platform
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from kvscope.bench.serve_stats import Distribution, RequestRecord, Summary, summarize
from kvscope.bench.workload import arrival_times, load_corpus
from kvscope.config import ConfigError
from kvscope.engine.llm_engine import LLMEngine
from kvscope.kernels.build import _CPUINFO_NAMES, ISAS, cpu_flags, selected_isa
from kvscope.model.loader import LoadedModel
from kvscope.sampling_params import SamplingParams
from kvscope.scope.lab import LabRunRequest, LabSpeculativeConfig, build_lab_engine
from kvscope.scope.lab_limits import LabBudget
from kvscope.serve.protocol import StrictModel

BLOCK_SIZE = 16
NGRAM_TOKENS = 4  # draft tokens per step when speculative decoding is on
MAX_STEPS = 4000  # a guard against a bug; the lab budget stops a live run far sooner
SETTING_KEYS = ("max_num_seqs", "max_num_batched_tokens", "num_blocks",
                "enable_prefix_caching", "speculative", "request_rate")
WORKLOAD_KEYS = ("num_requests", "input_len", "output_len", "shared_prefix_len", "seed")


class TuningRun(StrictModel):
    """One setting (the knobs) and the workload it serves; every field is bounded so a
    lab run stays a few seconds of work."""

    max_num_seqs: int = Field(8, ge=1, le=32)
    max_num_batched_tokens: int = Field(256, ge=16, le=2048)
    num_blocks: int = Field(64, ge=4, le=512)  # the KV pool, in blocks of BLOCK_SIZE tokens
    enable_prefix_caching: bool = True
    speculative: Literal["off", "ngram"] = "off"
    request_rate: float | None = Field(None, gt=0, le=100)  # requests/s; None: all at once
    num_requests: int = Field(8, ge=1, le=16)
    input_len: int = Field(64, ge=8, le=256)
    output_len: int = Field(24, ge=2, le=64)
    shared_prefix_len: int = Field(32, ge=0, le=256)  # leading tokens every prompt shares
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _fits(self) -> TuningRun:
        if self.shared_prefix_len > self.input_len:
            raise ValueError(f"shared_prefix_len ({self.shared_prefix_len}) must be at most "
                             f"input_len ({self.input_len})")
        need = self.input_len + self.output_len + (NGRAM_TOKENS if self.speculative == "ngram"
                                                   else 0)
        if self.num_blocks * BLOCK_SIZE < need:
            raise ValueError(f"num_blocks {self.num_blocks} holds {self.num_blocks * BLOCK_SIZE} "
                             f"tokens, but one request needs {need} (input_len + output_len"
                             f"{' + draft tokens' if self.speculative == 'ngram' else ''})")
        return self

    def setting(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SETTING_KEYS}

    def workload(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in WORKLOAD_KEYS}


def workload_prompts(loaded: LoadedModel, run: TuningRun) -> list[list[int]]:
    """`num_requests` prompts of exactly `input_len` token ids: a common head of
    `shared_prefix_len` tokens (what prefix caching can reuse) followed by a window of
    the bundled corpus at a seeded random offset. Token ids, not text, so that every
    prompt has its exact length."""
    ids = loaded.tokenizer.encode(load_corpus(), add_special_tokens=False)
    rng = random.Random(run.seed)
    head = _window(ids, rng.randrange(len(ids)), run.shared_prefix_len)
    tail = run.input_len - run.shared_prefix_len
    return [head + _window(ids, rng.randrange(len(ids)), tail) for _ in range(run.num_requests)]


def _window(ids: list[int], start: int, length: int) -> list[int]:
    """ids[start:start + length], wrapping round to the start."""
    return [ids[(start + i) % len(ids)] for i in range(length)]


def build_engine(loaded: LoadedModel, run: TuningRun) -> LLMEngine:
    """The point's engine: a lab engine (scope/lab.py) with exactly `num_blocks` blocks."""
    spec = LabSpeculativeConfig(method="ngram", num_speculative_tokens=NGRAM_TOKENS) \
        if run.speculative == "ngram" else None
    lab = LabRunRequest(prompts=["-"], max_tokens=run.output_len, block_size=BLOCK_SIZE,
                        num_blocks=run.num_blocks,
                        enable_prefix_caching=run.enable_prefix_caching,
                        max_num_seqs=run.max_num_seqs,
                        max_num_batched_tokens=run.max_num_batched_tokens,
                        speculative_config=spec)
    try:
        return build_lab_engine(loaded, lab, None)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc


def warm_up(engine: LLMEngine, prompts: list[list[int]], seats: int) -> None:
    """A short batch of the run's own prompts before the clock starts (the first call
    of a shape allocates and builds caches, up to seconds on a busy machine), then an
    empty prefix cache so the measured run starts cold."""
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    for i, prompt in enumerate(prompts[:seats]):
        engine.add_request(f"warm-up-{i}", prompt, params)
    while engine.has_unfinished_requests():
        engine.step()
    engine.reset_prefix_cache()


@dataclass(slots=True)
class Clock:
    """The records of a timed run and the time the budget made it wait."""

    records: list[RequestRecord]
    start: float = field(default_factory=time.perf_counter)
    last_chunk: list[float] = field(default_factory=list)  # per request: its latest chunk
    tokens: list[int] = field(default_factory=list)
    waited_s: float = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.start


def drive(engine: LLMEngine, run: TuningRun, prompts: list[list[int]],
          budget: LabBudget | None) -> tuple[list[RequestRecord], float, float]:
    """Serve the prompts at their arrival times and time every request; returns the
    records, the duration from the first arrival to the last token, and the seconds
    spent in the budget's checks (waiting for the serving engine counts there)."""
    rate = math.inf if run.request_rate is None else run.request_rate
    times = arrival_times(len(prompts), rate, run.seed)
    clock = Clock([RequestRecord(i, run.output_len, len(p)) for i, p in enumerate(prompts)])
    clock.last_chunk = [0.0] * len(prompts)
    clock.tokens = [0] * len(prompts)
    params = SamplingParams(temperature=0.0, max_tokens=run.output_len, ignore_eos=True)
    pending, steps = 0, 0
    while pending < len(prompts) or engine.has_unfinished_requests():
        if not engine.has_unfinished_requests() and times[pending] > clock.now():
            time.sleep(times[pending] - clock.now())  # idle until the next arrival
        while pending < len(prompts) and times[pending] <= clock.now():
            clock.records[pending].send_s = times[pending]
            engine.add_request(str(pending), prompts[pending], params)
            pending += 1
        if budget is not None:
            t0 = time.perf_counter()
            budget.before_step(engine)
            clock.waited_s += time.perf_counter() - t0
        _record_step(clock, engine.step())
        steps += 1
        if steps > MAX_STEPS:
            raise RuntimeError("the tuning run did not finish")
    return clock.records, clock.now(), clock.waited_s


def _record_step(clock: Clock, outputs: list[Any]) -> None:
    """Each output with new tokens is one chunk arriving now (its first: the TTFT)."""
    now = clock.now()
    for out in outputs:
        i = int(out.request_id)
        record = clock.records[i]
        count = len(out.outputs[0].token_ids)
        if count > clock.tokens[i]:
            if record.ttft_s is None:
                record.ttft_s = now - record.send_s
            else:
                record.itl_s.append(now - clock.last_chunk[i])
            clock.last_chunk[i] = now
            clock.tokens[i] = count
        if out.finished:
            record.e2e_s = now - record.send_s
            record.output_tokens = count
            record.prompt_tokens = len(out.prompt_token_ids)
            record.success = out.outputs[0].finish_reason == "length"
            if not record.success:
                record.error = f"finished by {out.outputs[0].finish_reason}"


def measure_setting(loaded: LoadedModel, run: TuningRun,
                    budget: LabBudget | None = None) -> dict[str, Any]:
    """Measure one setting: its figures, the engine's counters, and the machine. Raises
    ValueError for a setting the engine refuses and LabStopped when the budget ends it."""
    prompts = workload_prompts(loaded, run)
    engine = build_engine(loaded, run)
    try:
        warm_up(engine, prompts, run.max_num_seqs)
        before = engine.get_stats()
        records, duration, waited = drive(engine, run, prompts, budget)
        stats = engine.get_stats()
    finally:
        engine.shutdown()
    summary = summarize(records, duration)
    return {"setting": run.setting(), "workload": run.workload(),
            "metrics": metrics(summary, len(records)),
            "engine": engine_counters(before, stats), "budget_wait_s": round(waited, 4),
            "machine": machine(loaded)}


def _ms(dist: Distribution) -> dict[str, float | None]:
    return {k: (None if math.isnan(v) else round(v, 3))
            for k, v in (("mean", dist.mean), ("p99", dist.p99))}


def metrics(summary: Summary, requested: int) -> dict[str, Any]:
    """The point's figures: latencies in ms (mean and p99), throughputs per second."""
    return {"requests": requested, "completed": summary.completed, "failed": summary.failed,
            "duration_s": round(summary.duration_s, 4),
            "output_tokens": summary.output_tokens, "prompt_tokens": summary.prompt_tokens,
            "ttft_ms": _ms(summary.ttft_ms), "tpot_ms": _ms(summary.tpot_ms),
            "itl_ms": _ms(summary.itl_ms), "e2e_ms": _ms(summary.e2e_ms),
            "output_throughput": round(summary.output_throughput, 3),
            "request_throughput": round(summary.request_throughput, 4)}


def engine_counters(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the engine did in the timed run (the warm-up's counts taken out)."""
    def grew(name: str) -> int:
        return int(after.get(name, 0)) - int(before.get(name, 0))

    queries, hits = grew("prefix_cache_queries"), grew("prefix_cache_hits")
    drafts, accepted = grew("spec_num_draft_tokens"), grew("spec_num_accepted_tokens")
    return {"steps": grew("num_steps"), "preemptions": grew("num_preemptions"),
            "prefix_cache_hit_rate": round(hits / queries, 4) if queries else 0.0,
            "draft_acceptance_rate": round(accepted / drafts, 4) if drafts else None}


def machine(loaded: LoadedModel) -> dict[str, Any]:
    """Where the point was measured: CPU, the ISA flags the kernels care about, torch
    threads (and OMP_WAIT_POLICY, which changes step times under contention), and the
    model as loaded."""
    wanted = sorted({f for isa in ISAS.values() for f in isa})
    flags = cpu_flags()
    return {"cpu": _cpu_model(), "machine": platform.machine(),
            "isa_flags": [f for f in wanted if _CPUINFO_NAMES.get(f, f) in flags],
            "kernel_isa": selected_isa(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "model": loaded.path.name, "architecture": loaded.arch.architecture,
            "dtype": str(loaded.dtype).removeprefix("torch."), "weights": loaded.weights}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
