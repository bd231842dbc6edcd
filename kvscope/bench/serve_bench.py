"""`kvscope bench serve`: replay a workload against any OpenAI-compatible server and
report TTFT, TPOT, ITL, end-to-end latency, throughput and goodput.

Requests are streamed (`stream: true` with usage), greedy by default, and ask for
exactly `output_len` tokens (`ignore_eos`, which kvscope and vLLM accept). They are
sent at Poisson arrival times (`--request-rate`), with at most `--max-concurrency` in
flight; a request waiting for a concurrency slot starts its clock when it is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from kvscope.bench.client import (
    ServerTokenizer,
    default_model,
    make_client,
    request_body,
    stream_request,
)
from kvscope.bench.serve_stats import (
    RequestRecord,
    Summary,
    format_summary,
    parse_slos,
    summarize,
)
from kvscope.bench.workload import (
    BenchRequest,
    arrival_times,
    corpus_workload,
    dataset_workload,
    load_corpus,
)

DEFAULT_NUM_PROMPTS = 64


@dataclass
class BenchConfig:
    base_url: str = "http://127.0.0.1:8000"
    endpoint: str = "/v1/completions"
    model: str | None = None  # None: the first model the server lists
    api_key: str | None = None
    num_prompts: int | None = None  # None: 64 corpus prompts, or every dataset line
    input_len: int = 128
    output_len: int = 128
    dataset: str | None = None
    request_rate: float = math.inf
    max_concurrency: int | None = None
    seed: int = 0
    temperature: float = 0.0
    ignore_eos: bool = True
    goodput: dict[str, float] = field(default_factory=dict)  # SLO name → ms
    label: str | None = None
    save_result: str | None = None
    timeout_s: float = 600.0
    progress: bool = True

    def as_json(self) -> dict[str, Any]:
        """The config for the result file (no API key; inf as the string "inf")."""
        data = asdict(self)
        data.pop("api_key")
        if math.isinf(self.request_rate):
            data["request_rate"] = "inf"
        return data


async def build_workload(client: httpx.AsyncClient, config: BenchConfig,
                         model: str) -> tuple[list[BenchRequest], str]:
    """The requests, and how their prompts were measured ("dataset", "server
    tokenizer", or "~4 chars/token" when the server cannot tokenize)."""
    if config.dataset:
        requests = dataset_workload(Path(config.dataset), config.output_len)
        return requests[:config.num_prompts or len(requests)], "dataset"
    tokenizer = await ServerTokenizer.probe(client, model)
    requests = await corpus_workload(load_corpus(), tokenizer, config.num_prompts or
                                     DEFAULT_NUM_PROMPTS, config.input_len,
                                     config.output_len, config.seed)
    return requests, "server tokenizer" if tokenizer else "~4 chars/token"


async def dispatch(client: httpx.AsyncClient, config: BenchConfig, model: str,
                   requests: list[BenchRequest]) -> tuple[list[RequestRecord], float]:
    """Send every request at its arrival time (within the concurrency limit); returns
    the records in request order and the duration from the first send to the last
    completion."""
    times = arrival_times(len(requests), config.request_rate, config.seed)
    limit = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
    bar = tqdm(total=len(requests), unit="req", file=sys.stderr, disable=not config.progress,
               desc="requests")
    start = time.perf_counter()

    async def one(index: int, request: BenchRequest) -> RequestRecord:
        record = RequestRecord(index, request.output_len, request.prompt_len)
        body = request_body(config.endpoint, model, request, config.temperature,
                            config.ignore_eos)
        async with limit or contextlib.nullcontext():
            record.send_s = time.perf_counter() - start
            await stream_request(client, config.endpoint, body, record)
        bar.update(1)
        return record

    tasks = []
    for index, (request, at) in enumerate(zip(requests, times, strict=True)):
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, request)))
    records = list(await asyncio.gather(*tasks))
    duration = time.perf_counter() - start
    bar.close()
    return records, duration


@dataclass
class BenchResult:
    config: BenchConfig
    model: str
    prompts_measured_by: str
    records: list[RequestRecord]
    summary: Summary
    date: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def as_json(self) -> dict[str, Any]:
        return {"label": self.config.label, "date": self.date, "model": self.model,
                "prompts_measured_by": self.prompts_measured_by,
                "config": self.config.as_json(), "summary": self.summary.as_dict(),
                "requests": [r.as_dict() for r in self.records]}


async def run_benchmark(config: BenchConfig) -> BenchResult:
    """Run the benchmark, and save its JSON when the config names a file."""
    if config.max_concurrency is not None and config.max_concurrency < 1:
        raise ValueError("--max-concurrency must be at least 1")
    async with make_client(config.base_url, config.api_key, config.timeout_s) as client:
        model = config.model or await default_model(client)
        requests, measured_by = await build_workload(client, config, model)
        if config.progress:
            print(f"{len(requests)} requests to {config.base_url}{config.endpoint} "
                  f"(model {model}; prompts measured by {measured_by})", file=sys.stderr)
        records, duration = await dispatch(client, config, model, requests)
    result = BenchResult(config, model, measured_by, records,
                         summarize(records, duration, config.goodput))
    if config.save_result:
        path = Path(config.save_result)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.as_json(), indent=1) + "\n")
    return result


def run(config: BenchConfig) -> BenchResult:
    return asyncio.run(run_benchmark(config))


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        base_url=args.base_url, endpoint=args.endpoint, model=args.model,
        api_key=args.api_key, num_prompts=args.num_prompts, input_len=args.input_len,
        output_len=args.output_len, dataset=args.dataset, request_rate=args.request_rate,
        max_concurrency=args.max_concurrency, seed=args.seed, temperature=args.temperature,
        ignore_eos=args.ignore_eos, goodput=parse_slos(args.goodput), label=args.label,
        save_result=args.save_result, timeout_s=args.timeout, progress=not args.disable_tqdm)


def cmd_bench_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        result = run(config)
    except httpx.HTTPError as exc:  # the server is unreachable or lists no model
        raise ValueError(f"{config.base_url}: {type(exc).__name__}: {exc}") from exc
    print(format_summary(result.summary, f"Serving benchmark: {config.label or result.model}"))
    failures = [r for r in result.records if r.error]
    if failures:
        print(f"{len(failures)} failed; the first (request {failures[0].index}): "
              f"{failures[0].error}", file=sys.stderr)
    if config.save_result:
        print(f"saved {config.save_result}", file=sys.stderr)
    return 0 if result.summary.completed else 1


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    """`kvscope bench serve ...` and `kvscope bench sweep ...` on the CLI's subcommands."""
    from kvscope.bench.sweep import add_sweep_parser

    bench = sub.add_parser("bench", help="benchmark clients")
    kinds = bench.add_subparsers(dest="bench_command", required=True)
    serve = kinds.add_parser("serve", help="benchmark an OpenAI-compatible server",
                             description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--base-url", default="http://127.0.0.1:8000")
    serve.add_argument("--endpoint", default="/v1/completions",
                       choices=["/v1/completions", "/v1/chat/completions"])
    serve.add_argument("--model", default=None,
                       help="model name to send (default: the first of GET /v1/models)")
    serve.add_argument("--api-key", default=os.environ.get("KVSCOPE_API_KEY"),
                       help="send 'Authorization: Bearer KEY' (default: $KVSCOPE_API_KEY)")
    serve.add_argument("--num-prompts", type=int, default=None,
                       help=f"requests to send (default {DEFAULT_NUM_PROMPTS}, or every "
                            "--dataset line)")
    serve.add_argument("--input-len", type=int, default=128,
                       help="prompt tokens per corpus prompt")
    serve.add_argument("--output-len", type=int, default=128,
                       help="max_tokens per request (dataset lines may set output_len)")
    serve.add_argument("--dataset", default=None,
                       help='JSONL of {"prompt": ..., "output_len": ...} instead of the corpus')
    serve.add_argument("--request-rate", type=float, default=math.inf,
                       help="Poisson arrivals per second (default inf: all at once)")
    serve.add_argument("--max-concurrency", type=int, default=None,
                       help="at most this many requests in flight")
    serve.add_argument("--seed", type=int, default=0, help="seeds prompts and arrivals")
    serve.add_argument("--temperature", type=float, default=0.0)
    serve.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                       help="leave ignore_eos out (requests may stop early at EOS)")
    serve.add_argument("--goodput", nargs="+", default=None, metavar="NAME:MS",
                       help="SLOs for goodput, e.g. ttft:500 tpot:100 e2e:20000")
    serve.add_argument("--label", default=None, help="names the run in the saved JSON")
    serve.add_argument("--save-result", default=None, metavar="PATH",
                       help="write config, summary and per-request records as JSON")
    serve.add_argument("--timeout", type=float, default=600.0,
                       help="seconds before one request counts as failed")
    serve.add_argument("--disable-tqdm", action="store_true")
    serve.set_defaults(func=cmd_bench_serve)
    add_sweep_parser(kinds)
