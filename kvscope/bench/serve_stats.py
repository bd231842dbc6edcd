"""Per-request timings of a serving benchmark and the summary made from them.

All times are seconds in records and milliseconds in the summary. TTFT runs from
sending the request to the first chunk with text; ITL is every gap between two
successive chunks with text (pooled over all requests); TPOT is a request's decode
time per token after the first, (E2E - TTFT) / (output tokens - 1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SLO_METRICS = ("ttft", "tpot", "e2e")


@dataclass(slots=True)
class RequestRecord:
    index: int
    output_len: int  # tokens asked for
    prompt_len: int | None = None  # tokens the workload measured (None: unknown)
    success: bool = False
    error: str | None = None
    send_s: float = 0.0  # when it was sent, from the start of the benchmark
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None  # from the server's usage chunk

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tpot_s": self.tpot_s}


@dataclass(slots=True)
class Distribution:
    mean: float
    median: float
    p99: float

    @classmethod
    def of(cls, values_ms: list[float]) -> Distribution:
        """mean / median / 99th percentile (linear interpolation); NaN when empty."""
        if not values_ms:
            return cls(math.nan, math.nan, math.nan)
        data = np.asarray(values_ms, dtype=np.float64)
        return cls(float(data.mean()), float(np.median(data)), float(np.percentile(data, 99)))


@dataclass(slots=True)
class Summary:
    completed: int
    failed: int
    duration_s: float
    prompt_tokens: int
    output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    goodput: float | None  # req/s meeting every SLO; None when no SLO was given
    ttft_ms: Distribution
    tpot_ms: Distribution
    itl_ms: Distribution
    e2e_ms: Distribution

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_slos(specs: list[str] | None) -> dict[str, float]:
    """["ttft:500", "e2e:20000"] → {"ttft": 500.0, "e2e": 20000.0} (milliseconds)."""
    slos: dict[str, float] = {}
    for spec in specs or []:
        name, sep, value = spec.partition(":")
        name = name.strip().lower()
        try:
            limit = float(value)
        except ValueError:
            limit = math.nan
        if not sep or name not in SLO_METRICS or not limit > 0:
            raise ValueError(f"goodput SLO {spec!r}: expected NAME:MS with NAME one of "
                             f"{', '.join(SLO_METRICS)} and MS > 0")
        slos[name] = limit
    return slos


def meets_slos(record: RequestRecord, slos: dict[str, float]) -> bool:
    """A successful request meets an SLO when its metric is at most the limit; a
    request with one output token has no TPOT, so a TPOT limit cannot fail it."""
    if not record.success:
        return False
    values = {"ttft": record.ttft_s, "tpot": record.tpot_s, "e2e": record.e2e_s}
    for name, limit_ms in slos.items():
        value = values[name]
        if value is None:
            if name == "tpot":
                continue
            return False
        if value * 1000 > limit_ms:
            return False
    return True


def _ms(values: list[float | None]) -> list[float]:
    return [v * 1000 for v in values if v is not None]


def summarize(records: list[RequestRecord], duration_s: float,
              slos: dict[str, float] | None = None) -> Summary:
    ok = [r for r in records if r.success]
    prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    per_s = 1 / duration_s if duration_s > 0 else math.nan
    goodput = None
    if slos:
        goodput = sum(meets_slos(r, slos) for r in ok) * per_s
    return Summary(
        completed=len(ok), failed=len(records) - len(ok), duration_s=duration_s,
        prompt_tokens=prompt_tokens, output_tokens=output_tokens,
        request_throughput=len(ok) * per_s, output_throughput=output_tokens * per_s,
        total_token_throughput=(prompt_tokens + output_tokens) * per_s, goodput=goodput,
        ttft_ms=Distribution.of(_ms([r.ttft_s for r in ok])),
        tpot_ms=Distribution.of(_ms([r.tpot_s for r in ok])),
        itl_ms=Distribution.of(_ms([gap for r in ok for gap in r.itl_s])),
        e2e_ms=Distribution.of(_ms([r.e2e_s for r in ok])))


def format_summary(summary: Summary, title: str = "Serving benchmark") -> str:
    rows = [
        ("Successful requests", f"{summary.completed}"),
        ("Failed requests", f"{summary.failed}"),
        ("Benchmark duration (s)", f"{summary.duration_s:.2f}"),
        ("Prompt tokens (usage)", f"{summary.prompt_tokens}"),
        ("Output tokens", f"{summary.output_tokens}"),
        ("Request throughput (req/s)", f"{summary.request_throughput:.2f}"),
        ("Output token throughput (tok/s)", f"{summary.output_throughput:.1f}"),
        ("Total token throughput (tok/s)", f"{summary.total_token_throughput:.1f}"),
    ]
    if summary.goodput is not None:
        rows.append(("Goodput (req/s)", f"{summary.goodput:.2f}"))
    width = 50
    lines = [f" {title} ".center(width, "=")]
    lines += [f"{name:<36}{value:>14}" for name, value in rows]
    lines.append(" latency (ms) ".center(width, "-"))
    lines.append(f"{'':<14}{'mean':>12}{'median':>12}{'p99':>12}")
    for name, dist in [("TTFT", summary.ttft_ms), ("TPOT", summary.tpot_ms),
                       ("ITL", summary.itl_ms), ("E2E", summary.e2e_ms)]:
        lines.append(f"{name:<14}{dist.mean:>12.2f}{dist.median:>12.2f}{dist.p99:>12.2f}")
    lines.append("=" * width)
    return "\n".join(lines)
