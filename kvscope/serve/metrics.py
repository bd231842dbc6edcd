"""Prometheus metrics of a serving engine, recorded in the engine thread after each step.

Gauges (running/waiting requests, KV cache usage) are read from the engine's stats;
counters and latency histograms are fed from each step's outputs. Each server gets
its own registry, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kvscope.outputs import RequestOutput

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                 40.0, 80.0, 160.0)
_TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                 2.5, 5.0)
_E2E_BUCKETS = (0.1, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)


class ServerMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"kvscope:{name}", doc, labels, registry=self.registry)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(f"kvscope:{name}", doc, labels + list(extra), registry=self.registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"kvscope:{name}", doc, labels, buckets=buckets,
                             registry=self.registry)

        self.running = gauge("num_requests_running", "requests in the running batch")
        self.waiting = gauge("num_requests_waiting", "requests waiting to be scheduled")
        self.kv_usage = gauge("kv_cache_usage_perc", "fraction of KV blocks in use (0-1)")
        self.used_blocks = gauge("kv_cache_used_blocks", "KV blocks held by requests")
        self.prefix_hit_rate = gauge("prefix_cache_hit_rate",
                                     "prefix-cache hit tokens / queried tokens (0-1)")
        self.prefix_queries = counter("prefix_cache_queries",
                                      "prompt tokens looked up in the prefix cache")
        self.prefix_hits = counter("prefix_cache_hits", "prompt tokens found in the cache")
        self.preemptions = counter("num_preemptions", "requests preempted")
        self.prompt_tokens = counter("prompt_tokens", "prompt tokens of requests served")
        self.generation_tokens = counter("generation_tokens", "tokens generated")
        self.finished = counter("request_success", "requests finished", ("finished_reason",))
        self.ttft = histogram("time_to_first_token_seconds", "arrival to first token",
                              _TTFT_BUCKETS)
        self.tpot = histogram("time_per_output_token_seconds",
                              "(latency - TTFT) / (output tokens - 1), per request",
                              _TPOT_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "arrival to last token",
                             _E2E_BUCKETS)
        self.spec_drafts = counter("spec_decode_num_drafts",
                                   "speculative decoding: request-steps that verified drafts")
        self.spec_draft_tokens = counter("spec_decode_num_draft_tokens",
                                         "speculative decoding: draft tokens verified")
        self.spec_accepted = counter("spec_decode_num_accepted_tokens",
                                     "speculative decoding: draft tokens accepted")
        self.model_name = model_name
        self._seen = {"num_preemptions": 0, "prefix_cache_queries": 0, "prefix_cache_hits": 0,
                      "num_generated_tokens": 0, "spec_num_rounds": 0,
                      "spec_num_draft_tokens": 0, "spec_num_accepted_tokens": 0}

    def on_step(self, stats: dict, outputs: list[RequestOutput]) -> None:
        """A step listener for AsyncEngine (runs in the engine thread)."""
        self.set_gauges(stats)
        self._advance(self.preemptions, "num_preemptions", stats)
        self._advance(self.prefix_queries, "prefix_cache_queries", stats)
        self._advance(self.prefix_hits, "prefix_cache_hits", stats)
        queried = self._seen["prefix_cache_queries"]
        self.prefix_hit_rate.labels(self.model_name).set(
            self._seen["prefix_cache_hits"] / queried if queried else 0.0)
        self._advance(self.generation_tokens, "num_generated_tokens", stats)
        self._advance(self.spec_drafts, "spec_num_rounds", stats)
        self._advance(self.spec_draft_tokens, "spec_num_draft_tokens", stats)
        self._advance(self.spec_accepted, "spec_num_accepted_tokens", stats)
        for output in outputs:
            self._record_request(output)

    def on_abort(self, request_id: str) -> None:
        """An abort listener for AsyncEngine: an unfinished request was aborted (its
        client left), so it ends under finished_reason="abort"."""
        self.finished.labels(self.model_name, "abort").inc()

    def set_gauges(self, stats: dict) -> None:
        name = self.model_name
        self.running.labels(name).set(stats["num_running"])
        self.waiting.labels(name).set(stats["num_waiting"])
        self.kv_usage.labels(name).set(stats["kv_cache_usage"])
        self.used_blocks.labels(name).set(stats["num_used_blocks"])

    def _advance(self, counter: Counter, key: str, stats: dict) -> None:
        value = stats.get(key, 0)
        counter.labels(self.model_name).inc(value - self._seen[key])
        self._seen[key] = value

    def _record_request(self, output: RequestOutput) -> None:
        name = self.model_name
        completion = output.outputs[0]
        m = output.metrics
        if len(completion.token_ids) == 1:  # its first token: the prefill is done
            self.prompt_tokens.labels(name).inc(len(output.prompt_token_ids))
            if m.first_token_time is not None:
                self.ttft.labels(name).observe(m.first_token_time - m.arrival_time)
        if not output.finished or m.finished_time is None:
            return
        self.finished.labels(name, completion.finish_reason or "abort").inc()
        latency = m.finished_time - m.arrival_time
        self.e2e.labels(name).observe(latency)
        if len(completion.token_ids) > 1 and m.first_token_time is not None:
            tpot = (m.finished_time - m.first_token_time) / (len(completion.token_ids) - 1)
            self.tpot.labels(name).observe(tpot)

    def render(self, stats: dict) -> bytes:
        """The exposition text; gauges are set from `stats` first, since an abort
        between steps changes them without a step."""
        self.set_gauges(stats)
        return generate_latest(self.registry)
