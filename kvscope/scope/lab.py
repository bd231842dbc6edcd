"""Lesson runs: a small, fresh engine on the server's loaded weights, every event kept.

A lesson page asks for a run (a few prompts, a tiny pool, small blocks) and draws
what the engine did from the events it returns. The engine is private to the run and
shares only the read-only weights; a `LabBudget` (lab_limits.py) caps the tokens and
time a run may take and makes it wait while the serving engine has work.

With `speculative_config` the run drafts and verifies tokens; the response then also
carries the text of every token a verification saw (rejected drafts included), and with
`compare_plain` the same prompts run once more on an engine without speculation, so the
page can show whether the token ids came out the same.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from kvscope.config import ConfigError, EngineConfig
from kvscope.engine.llm_engine import LLMEngine
from kvscope.events import ListSink
from kvscope.model.loader import LoadedModel
from kvscope.request import RequestError
from kvscope.sampling_params import BeamSearchParams, SamplingParams
from kvscope.scope.lab_limits import LabBudget, LabLimits
from kvscope.serve.protocol import StrictModel

MAX_PROMPT_TOKENS = 256
MAX_STEPS = 2000  # far above what the limits below allow; a guard against a bug


class LabSpeculativeConfig(StrictModel):
    """Speculative decoding for a lesson run: the proposers that need no second model."""

    method: Literal["ngram", "self_draft"]
    num_speculative_tokens: int = Field(4, ge=1, le=8)
    prompt_lookup_max: int | None = Field(None, ge=1, le=8)  # ngram (default 3)
    draft_layers: int | None = Field(None, ge=1, le=256)  # self_draft (default: half)

    @model_validator(mode="after")
    def _options_of_the_method(self) -> LabSpeculativeConfig:
        if self.method == "ngram" and self.draft_layers is not None:
            raise ValueError("draft_layers applies to method 'self_draft' only")
        if self.method == "self_draft" and self.prompt_lookup_max is not None:
            raise ValueError("prompt_lookup_max applies to method 'ngram' only")
        return self

    def engine_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"method": self.method,
                                   "num_speculative_tokens": self.num_speculative_tokens}
        if self.method == "ngram":
            options["prompt_lookup_max"] = self.prompt_lookup_max or 3
        elif self.draft_layers is not None:
            options["draft_layers"] = self.draft_layers
        return options


class LabRunRequest(StrictModel):
    prompts: list[str] = Field(min_length=1, max_length=8)
    max_tokens: int = Field(16, ge=1, le=64)
    block_size: int = Field(16, ge=1, le=64)
    num_blocks: int = Field(64, ge=2, le=512)
    enable_prefix_caching: bool = True
    preemption_mode: Literal["recompute", "swap"] = "recompute"
    swap_blocks: int = Field(64, ge=0, le=512)
    policy: Literal["fcfs", "priority"] = "fcfs"
    priorities: list[int] | None = None
    max_num_seqs: int = Field(8, ge=1, le=64)
    max_num_batched_tokens: int = Field(256, ge=1, le=4096)
    arrive_at_step: list[int] | None = None  # request i joins before this engine step
    max_tokens_each: list[int] | None = None  # request i's output length (instead of max_tokens)
    batching: Literal["continuous", "static"] = "continuous"  # static: a batch runs to its end
    ignore_eos: bool = True
    n: int = Field(1, ge=1, le=8)  # parallel sampling: sequences forked from each prompt
    best_of: int | None = Field(None, ge=1, le=8)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    seed: int = 0
    beam_width: int | None = Field(None, ge=1, le=8)  # beam search instead of sampling
    length_penalty: float = Field(1.0, ge=-4.0, le=4.0)
    speculative_config: LabSpeculativeConfig | None = None
    compare_plain: bool = False  # also run without speculation and compare the token ids
    tensor_parallel_size: int = Field(1, ge=1, le=2)  # 2: two worker processes, one gloo group
    watch_layer: int = Field(0, ge=0, le=255)  # tp=2: the layer whose partial sums are kept
    pipeline_parallel_size: int = Field(1, ge=1, le=2)  # 2: two stages, two worker processes

    @model_validator(mode="after")
    def _per_prompt_lists(self) -> LabRunRequest:
        for name in ("priorities", "arrive_at_step"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.prompts):
                raise ValueError(f"{name} needs one value per prompt ({len(self.prompts)})")
        if self.arrive_at_step is not None and any(s < 0 or s > 500
                                                   for s in self.arrive_at_step):
            raise ValueError("arrive_at_step values must be between 0 and 500")
        if self.max_tokens_each is not None and len(self.max_tokens_each) != len(self.prompts):
            raise ValueError(f"max_tokens_each needs one value per prompt ({len(self.prompts)})")
        if self.max_tokens_each is not None and any(not 1 <= m <= 64 for m in self.max_tokens_each):
            raise ValueError("max_tokens_each values must be between 1 and 64")
        if any(not p for p in self.prompts):
            raise ValueError("prompts must not be empty")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of must be >= n ({self.n})")
        if self.speculative_config is not None and (
                self.n > 1 or self.best_of is not None or self.beam_width is not None):
            raise ValueError("speculative_config works on single sequences: it does not "
                             "combine with n > 1, best_of or beam_width")
        if self.tensor_parallel_size * self.pipeline_parallel_size > 2:
            raise ValueError("a lesson run starts at most two worker processes: "
                             "tensor_parallel_size × pipeline_parallel_size must be <= 2")
        if self.pipeline_parallel_size > 1 and self.speculative_config is not None:
            raise ValueError("speculative_config does not combine with "
                             "pipeline_parallel_size > 1")
        if self.compare_plain and self.speculative_config is None:
            raise ValueError("compare_plain compares a speculative run with a plain one: "
                             "it needs speculative_config")
        return self


def build_lab_engine(loaded: LoadedModel, req: LabRunRequest, sink: ListSink | None,
                     speculative: bool = True) -> LLMEngine:
    """An engine whose pool holds exactly `num_blocks` blocks of `block_size` tokens
    (with the run's speculative decoding unless `speculative` is False)."""
    spec = req.speculative_config if speculative else None
    bytes_per_block = loaded.arch.kv_bytes_per_token(loaded.dtype.itemsize) * req.block_size
    max_len = min(req.num_blocks * req.block_size, loaded.arch.max_position_embeddings, 2048)
    config = EngineConfig.from_kwargs(
        dtype=loaded.dtype, block_size=req.block_size, max_model_len=max_len,
        kv_cache_memory=req.num_blocks * bytes_per_block,
        enable_prefix_caching=req.enable_prefix_caching,
        preemption_mode=req.preemption_mode, swap_space=req.swap_blocks * bytes_per_block,
        policy=req.policy, max_num_seqs=req.max_num_seqs,
        max_num_batched_tokens=req.max_num_batched_tokens,
        batching=req.batching,
        speculative_config=spec.engine_options() if spec is not None else None,
        tensor_parallel_size=req.tensor_parallel_size,
        pipeline_parallel_size=req.pipeline_parallel_size)
    return LLMEngine(config, sink=sink, loaded=loaded)


def run_lab(loaded: LoadedModel, req: LabRunRequest,
            budget: LabBudget | None = None) -> dict[str, Any]:
    """Run the lesson's workload to the end; raises ValueError for input the engine
    refuses (the route answers 400) and LabStopped when the budget runs out."""
    budget = budget or LabBudget(LabLimits())
    if req.watch_layer >= loaded.arch.num_layers:
        raise ValueError(f"watch_layer must be below the model's {loaded.arch.num_layers} "
                         f"layers; got {req.watch_layer}")
    sink = ListSink()
    try:
        engine = build_lab_engine(loaded, req, sink)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    try:
        return _run(engine, loaded, req, sink, budget)
    finally:
        engine.shutdown()  # a tensor- or pipeline-parallel run's worker processes


def _run(engine: LLMEngine, loaded: LoadedModel, req: LabRunRequest, sink: ListSink,
         budget: LabBudget) -> dict[str, Any]:
    _check_prompt_lengths(engine, req.prompts)
    watching = req.tensor_parallel_size > 1
    if watching:
        engine.executor.watch_layer(req.watch_layer)
    outputs = _drive(engine, req, budget)
    events = sink.dicts()
    result: dict[str, Any] = {
        "events": events,
        "outputs": [_output(outputs[str(i)]) for i in range(len(req.prompts))],
        "num_steps": engine.scheduler.num_steps,
        # batching="static": seats × steps while a batch ran, and the seats left idle
        "num_slot_steps": engine.scheduler.num_slot_steps,
        "num_idle_slot_steps": engine.scheduler.num_idle_slot_steps,
        "final": {"tables": engine.kv.all_block_ids(),
                  "refcounts": [b.ref_cnt for b in engine.kv.pool.blocks],
                  "num_free_blocks": engine.kv.num_free_blocks},
    }
    if watching:  # the row-parallel partial sums of the run's last step, per rank
        result["tensor_parallel"] = {"layer": req.watch_layer,
                                     "step": engine.scheduler.num_steps - 1,
                                     "ranks": engine.executor.watch_layer(None)}
    if req.speculative_config is not None:
        result["token_texts"] = _token_texts(engine, events)
    if req.compare_plain:
        budget.engine_done(engine)
        result["plain"] = _plain_run(loaded, req, result["outputs"], budget)
    return result


def _drive(engine: LLMEngine, req: LabRunRequest, budget: LabBudget) -> dict[str, Any]:
    """Add the prompts at their arrival steps and step until all are done (or the
    budget stops the run); the final output of each request, by request id."""
    arrivals = req.arrive_at_step or [0] * len(req.prompts)
    pending = sorted(range(len(req.prompts)), key=lambda i: (arrivals[i], i))
    outputs: dict[str, Any] = {}
    while pending or engine.has_unfinished_requests():
        idle = not engine.has_unfinished_requests()
        while pending and (idle or arrivals[pending[0]] <= engine.scheduler.num_steps):
            _add(engine, req, pending.pop(0))
            idle = False
        budget.before_step(engine)
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = out
        if engine.scheduler.num_steps > MAX_STEPS:
            raise RuntimeError("the lab run did not finish")
    return outputs


def _token_texts(engine: LLMEngine, events: list[dict[str, Any]]) -> dict[str, str]:
    """The text of each token a verification saw (drafts, accepted or not, and the
    target's own tokens) and of each token emitted, one token at a time, special
    tokens spelled out."""
    ids: set[int] = set()
    for e in events:
        if e["kind"] == "drafts_verified":
            ids.update(e["draft_token_ids"])
            ids.update(e["token_ids"])
        elif e["kind"] == "token_emitted":
            ids.add(e["token_id"])
    return {str(t): engine.tokenizer.decode([t], skip_special_tokens=False) for t in sorted(ids)}


def _plain_run(loaded: LoadedModel, req: LabRunRequest, speculative: list[dict[str, Any]],
               budget: LabBudget) -> dict[str, Any]:
    """The same workload on an engine without speculative decoding (no events kept):
    its outputs, and for each prompt whether its token ids equal the speculative run's."""
    engine = build_lab_engine(loaded, req, None, speculative=False)
    try:
        outputs = _drive(engine, req, budget)
    finally:
        engine.shutdown()
    plain = [_output(outputs[str(i)]) for i in range(len(req.prompts))]
    return {"outputs": [{"request_id": o["request_id"], "text": o["text"],
                         "token_ids": o["token_ids"]} for o in plain],
            "identical": [p["token_ids"] == s["token_ids"]
                          for p, s in zip(plain, speculative, strict=True)]}


def _max_tokens(req: LabRunRequest, index: int) -> int:
    """Prompt `index`'s output length: its own from max_tokens_each, else max_tokens."""
    return req.max_tokens_each[index] if req.max_tokens_each else req.max_tokens


def _add(engine: LLMEngine, req: LabRunRequest, index: int) -> None:
    """Add prompt `index` (as request id str(index)); an idle engine takes the next
    arrival at once instead of stepping empty."""
    params = SamplingParams(n=req.n, best_of=req.best_of, temperature=req.temperature,
                            seed=req.seed, max_tokens=_max_tokens(req, index),
                            ignore_eos=req.ignore_eos)
    priority = req.priorities[index] if req.priorities else 0
    try:
        if req.beam_width is not None:
            engine.add_beam_request(str(index), req.prompts[index], BeamSearchParams(
                beam_width=req.beam_width, max_tokens=_max_tokens(req, index),
                length_penalty=req.length_penalty, ignore_eos=req.ignore_eos))
        else:
            engine.add_request(str(index), req.prompts[index], params, priority=priority)
    except RequestError as exc:
        raise ValueError(f"prompt {index}: {exc}") from exc


def _check_prompt_lengths(engine: LLMEngine, prompts: list[str]) -> None:
    for i, prompt in enumerate(prompts):
        n = len(engine.tokenize(prompt)[1])
        if n > MAX_PROMPT_TOKENS:
            raise ValueError(f"prompt {i} has {n} tokens; lesson runs take at most "
                             f"{MAX_PROMPT_TOKENS}")


def _output(out: Any) -> dict[str, Any]:
    """The first completion's text and tokens, and every completion (n > 1, beams)."""
    completion = out.outputs[0]
    return {"request_id": out.request_id, "prompt": out.prompt, "text": completion.text,
            "token_ids": completion.token_ids, "prompt_token_ids": out.prompt_token_ids,
            "completions": [{"index": c.index, "text": c.text, "token_ids": c.token_ids,
                             "cumulative_logprob": c.cumulative_logprob,
                             "finish_reason": c.finish_reason} for c in out.outputs]}
