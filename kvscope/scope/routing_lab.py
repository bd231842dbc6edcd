"""The data-parallelism lesson: one shared-prefix workload spread over replicas by the
router's own policies (serve/router/policies.py), each replica a private lab engine
with its own KV pool and prefix cache, so the page can show where each request went
and what its replica's cache already held.

The workload is every question under every system prompt, question-major (so two
requests in a row have different system prompts). For each policy the requests arrive
one at a time: the policy picks a `Worker` (its `in_flight` set to that replica's
unfinished requests), the request joins that replica's engine, and every replica with
work takes one step before the next arrival; at the end the replicas step until done.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from kvscope.config import ConfigError
from kvscope.engine.llm_engine import LLMEngine
from kvscope.events import ListSink
from kvscope.kv.kv_manager import blocks_needed
from kvscope.model.loader import LoadedModel
from kvscope.request import RequestError
from kvscope.sampling_params import SamplingParams
from kvscope.scope.inside.common import MAX_PROMPT_CHARS
from kvscope.scope.lab import MAX_PROMPT_TOKENS, MAX_STEPS, LabRunRequest, build_lab_engine
from kvscope.scope.lab_limits import LabBudget, LabLimits, LabStopped
from kvscope.serve.protocol import StrictModel
from kvscope.serve.router.policies import CacheAware, RoundRobin
from kvscope.serve.router.workers import Worker

ROUTING_POLICIES = ("round_robin", "cache_aware")

SYSTEMS = [
    "You are the help desk of a public library in a small harbour town. You answer "
    "questions about opening hours, borrowing rules, late fees and the reading room. "
    "Keep every answer to one or two plain sentences, never invent a rule the library "
    "does not have, and when you are unsure, ask the visitor to call the front desk "
    "during opening hours.",
    "You are a patient maths tutor for students of about fourteen. Explain one idea at "
    "a time with a small worked example, use whole numbers where you can, and check the "
    "arithmetic before you answer. Do not hand over the final answer to homework at "
    "once: give a hint first, then the next step, and praise careful work rather than "
    "speed in every reply.",
    "You write short product descriptions for an online shop that sells hiking gear. "
    "Mention the weight, the material and one situation where the item helps on a long "
    "walk. Avoid superlatives and claims you cannot check, write in the second person, "
    "and end with a single line of care instructions. Each description stays under fifty "
    "words and never mentions prices or competitors.",
    "You are a travel assistant for a regional railway company. You help passengers "
    "find connections, explain which tickets they need, and tell them what to do when "
    "a train is late or cancelled. Give times in the twenty-four hour clock, name the "
    "platform when you know it, and always remind passengers that bicycles need their "
    "own reserved space on weekend trains.",
]

QUESTIONS = [
    "What should I do first today?",
    "Can you explain that more simply?",
    "Is there anything I should avoid?",
    "How long will it take?",
]


Text = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]  # refused before tokenizing


class RoutingLabRequest(StrictModel):
    systems: list[Text] = Field(default_factory=lambda: list(SYSTEMS), min_length=2,
                                max_length=6)
    questions: list[Text] = Field(default_factory=lambda: list(QUESTIONS), min_length=2,
                                  max_length=8)
    replicas: int = Field(3, ge=2, le=4)
    max_tokens: int = Field(4, ge=1, le=16)
    block_size: int = Field(16, ge=4, le=64)

    @model_validator(mode="after")
    def _texts(self) -> RoutingLabRequest:
        for name in ("systems", "questions"):
            if any(not text.strip() for text in getattr(self, name)):
                raise ValueError(f"{name} must not be empty")
        return self

    def prompt(self, system: int, question: int) -> str:
        return f"{self.systems[system]}\n\nQuestion: {self.questions[question]}\nAnswer:"

    def arrivals(self) -> list[tuple[int, int]]:
        """(system, question) of every request in arrival order: question-major."""
        return [(s, q) for q in range(len(self.questions)) for s in range(len(self.systems))]


def routing_lesson(loaded: LoadedModel, req: RoutingLabRequest,
                   budget: LabBudget | None = None) -> dict[str, Any]:
    """Both policies' runs of the workload; raises ValueError for a prompt the lesson
    refuses and LabStopped when the budget runs out (every replica's requests aborted)."""
    budget = budget or LabBudget(LabLimits())
    lengths = [len(loaded.tokenizer.encode(req.prompt(s, q), add_special_tokens=True))
               for s, q in req.arrivals()]
    longest = max(lengths)
    if longest > MAX_PROMPT_TOKENS:
        index = lengths.index(longest)
        s, q = req.arrivals()[index]
        raise ValueError(f"the prompt of system {s} and question {q} has {longest} tokens; "
                         f"lesson runs take at most {MAX_PROMPT_TOKENS}")
    engine_req = _engine_request(req, longest)
    runs = []
    for name in ROUTING_POLICIES:
        runs.append(_policy_run(loaded, req, engine_req, name, budget))
    return {"workload": {"systems": req.systems, "questions": req.questions,
                         "replicas": req.replicas, "max_tokens": req.max_tokens,
                         "block_size": req.block_size, "num_blocks": engine_req.num_blocks,
                         "prompt_tokens": lengths},
            "policies": runs}


def _engine_request(req: RoutingLabRequest, longest: int) -> LabRunRequest:
    """One replica's engine: a pool for every request that can be in flight at once
    (one arrival per step, each running max_tokens steps) with room to keep the cached
    prefixes, and a token budget that takes a whole prompt in one step."""
    per_request = blocks_needed(longest + req.max_tokens, req.block_size)
    in_flight = min(len(req.arrivals()), req.max_tokens + 1)
    num_blocks = min(512, per_request * (in_flight + len(req.systems)))
    return LabRunRequest(prompts=[req.prompt(0, 0)], max_tokens=req.max_tokens,
                         block_size=req.block_size, num_blocks=num_blocks,
                         enable_prefix_caching=True, max_num_seqs=32,
                         max_num_batched_tokens=max(256, 2 * longest))


def _policy_run(loaded: LoadedModel, req: RoutingLabRequest, engine_req: LabRunRequest,
                name: str, budget: LabBudget) -> dict[str, Any]:
    sinks = [ListSink() for _ in range(req.replicas)]
    try:
        engines = [build_lab_engine(loaded, engine_req, sink) for sink in sinks]
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    try:
        return _route_and_run(engines, sinks, req, name, budget)
    finally:
        budget.spent_before += sum(e.num_computed_tokens for e in engines)
        for engine in engines:
            engine.shutdown()


def _route_and_run(engines: list[LLMEngine], sinks: list[ListSink], req: RoutingLabRequest,
                   name: str, budget: LabBudget) -> dict[str, Any]:
    policy = RoundRobin() if name == "round_robin" else CacheAware()
    workers = [Worker(url=f"replica {i}") for i in range(len(engines))]
    params = SamplingParams(temperature=0.0, max_tokens=req.max_tokens, ignore_eos=True)
    requests: list[dict[str, Any]] = []
    texts: dict[str, str] = {}
    for index, (s, q) in enumerate(req.arrivals()):
        loads = [len(e.unfinished_request_ids()) for e in engines]
        for worker, load in zip(workers, loads, strict=True):
            worker.in_flight = load
        prompt = req.prompt(s, q)
        decision = policy.choose(workers, prompt)
        replica = workers.index(decision.worker)
        decision.worker.requests += 1
        try:
            engines[replica].add_request(str(index), prompt, params)
        except RequestError as exc:
            raise ValueError(f"request {index}: {exc}") from exc
        requests.append({"index": index, "system": s, "question": q, "replica": replica,
                         "reason": decision.reason, "matched_chars": decision.matched_chars,
                         "prompt_chars": len(prompt), "loads": loads})
        _step_all(engines, budget, texts)
    steps = 0
    while any(e.has_unfinished_requests() for e in engines):
        _step_all(engines, budget, texts)
        steps += 1
        if steps > MAX_STEPS:
            raise RuntimeError("the routing lesson's run did not finish")
    lookups = [_lookups(sink) for sink in sinks]
    for r in requests:
        prompt_tokens, hit_tokens = lookups[r["replica"]][str(r["index"])]
        r.update(prompt_tokens=prompt_tokens, hit_tokens=hit_tokens, text=texts[str(r["index"])])
    replicas = [_replica(i, e, w) for i, (e, w) in enumerate(zip(engines, workers, strict=True))]
    queries = sum(r["prefix_cache_queries"] for r in replicas)
    hits = sum(r["prefix_cache_hits"] for r in replicas)
    return {"policy": name, "requests": requests, "replicas": replicas,
            "totals": {"requests": len(requests), "prefix_cache_queries": queries,
                       "prefix_cache_hits": hits, "hit_rate": hits / queries if queries else 0.0,
                       "num_computed_tokens": sum(r["num_computed_tokens"] for r in replicas),
                       "all_blocks_free": all(r["all_blocks_free"] for r in replicas)}}


def _step_all(engines: list[LLMEngine], budget: LabBudget, texts: dict[str, str]) -> None:
    """One step of every replica that has work, each checked against the run's budget
    (which counts the tokens of every replica); a stopped run aborts every replica."""
    for engine in engines:
        if not engine.has_unfinished_requests():
            continue
        others = sum(e.num_computed_tokens for e in engines if e is not engine)
        budget.spent_before += others
        try:
            budget.before_step(engine)
        except LabStopped:
            for e in engines:
                e.abort_request(list(e.unfinished_request_ids()))
            raise
        finally:
            budget.spent_before -= others
        for out in engine.step():
            if out.finished:
                texts[out.request_id] = out.outputs[0].text


def _lookups(sink: ListSink) -> dict[str, tuple[int, int]]:
    """(prompt tokens, prompt tokens found in the prefix cache) of each request, from
    its prefix_cache_lookup events (a request looked up again after a preemption adds
    that lookup, as the engine's counters do)."""
    out: dict[str, tuple[int, int]] = {}
    for e in sink.of_kind("prefix_cache_lookup"):
        queried, hit = out.get(e.request_id, (0, 0))
        out[e.request_id] = (queried + e.queried_tokens, hit + e.hit_tokens)
    return out


def _replica(index: int, engine: LLMEngine, worker: Worker) -> dict[str, Any]:
    stats = engine.get_stats()
    pool = engine.kv.pool
    return {"replica": index, "url": worker.url, "requests": worker.requests,
            "prefix_cache_queries": stats["prefix_cache_queries"],
            "prefix_cache_hits": stats["prefix_cache_hits"],
            "hit_rate": stats["prefix_cache_hit_rate"],
            "num_computed_tokens": engine.num_computed_tokens,
            "num_steps": stats["num_steps"], "num_blocks": pool.num_blocks,
            "num_free_blocks": engine.kv.num_free_blocks,
            "num_cached_blocks": pool.num_cached_blocks,
            "all_blocks_free": engine.kv.num_free_blocks == pool.num_blocks}
