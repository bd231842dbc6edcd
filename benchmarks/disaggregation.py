"""Disaggregated prefill/decode on CPU: one `kvscope serve` against a prefill server and a
decode server behind `kvscope pd-proxy`, and against two data-parallel replicas behind
`kvscope router --policy least_load`, on the same 2 cores and the same workload, in one run.

The workload mixes a steady Poisson stream of short chat-like requests (20-60 prompt
tokens, 32 greedy output tokens) with long-prompt requests (400-800 prompt tokens, 16
output tokens) at seeded random times; every request is streamed, EOS ignored. The
three ways to serve it, one after the other, each started fresh and warmed up first:

1. colocated: one `kvscope serve`, 2 threads on both cores;
2. P/D split: a prefill server (ZmqConnector, kv_producer) pinned to one core and a
   decode server (kv_consumer) pinned to the other, 1 thread each, behind `kvscope
   pd-proxy`;
3. data parallel: two plain replicas, one core and 1 thread each, behind `kvscope router
   --policy least_load`.

Measured from the client, per request: TTFT (send to the first streamed chunk with
text) and the inter-token latencies (gaps between successive chunks with text), for the
short and the long requests apart; and the output tokens/s of the whole run (output
tokens / time from the first arrival to the last finish). The greedy texts of the three
are compared request by request.

On 2 CPU cores this shows the shape of the trade-off: with P/D the decode steps no
longer wait behind long prefills, but every request pays a second hop and a K/V
transfer, and each side has half the cores. They are not GPU figures.

    .venv/bin/python benchmarks/disaggregation.py [--save benchmarks/results/disaggregation.json]
    .venv/bin/python benchmarks/disaggregation.py --quick   # a few seconds of arrivals

The table goes to stdout, progress to stderr. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import httpx  # noqa: E402
import throughput as tput  # noqa: E402
from tensor_parallel import simd_flags  # noqa: E402

from kvscope.bench.client import chunk_text, request_body, sse_data, stream_request  # noqa: E402
from kvscope.bench.serve_stats import RequestRecord, summarize  # noqa: E402
from kvscope.bench.workload import BenchRequest, arrival_times  # noqa: E402

log = tput.log
MODEL_NAME = "bench"
ENDPOINT = "/v1/completions"
SETUPS = ("colocated", "pd", "dp")
LABELS = {"colocated": "colocated", "pd": "P/D split", "dp": "2x DP least_load"}
DESCRIBE = {"colocated": "1 server, 2 threads", "pd": "1+1 core, pd-proxy",
            "dp": "2 x 1 core, router"}
STARTUP_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class Mix:
    duration_s: float  # arrivals happen in [0, duration_s)
    short_rate: float  # short requests per second (a Poisson process)
    short_prompt: tuple[int, int]  # prompt tokens, uniform in [lo, hi]
    short_output: int
    long_count: int  # long requests, at uniform random times
    long_prompt: tuple[int, int]
    long_output: int


FULL = Mix(60.0, 1.5, (20, 60), 32, 12, (400, 800), 16)
QUICK = Mix(4.0, 1.0, (20, 60), 8, 1, (400, 500), 4)


@dataclass(frozen=True, slots=True)
class Item:
    index: int
    kind: str  # "short" | "long"
    send_s: float  # the scheduled arrival, seconds from the start
    prompt_ids: tuple[int, ...]
    output_len: int


# -- the workload -------------------------------------------------------------------------


def make_workload(corpus_ids: Sequence[int], mix: Mix, seed: int) -> list[Item]:
    """The arrival schedule and the prompts (windows of `corpus_ids`), in arrival order.
    The same (corpus, mix, seed) always gives the same list."""
    rng = random.Random(f"disaggregation-{seed}")
    # enough Poisson arrivals to pass duration_s, cut there
    many = max(8, math.ceil(mix.short_rate * mix.duration_s * 2) + 16)
    short_times = [t for t in arrival_times(many, mix.short_rate, seed) if t < mix.duration_s]
    long_times = sorted(rng.uniform(0, mix.duration_s) for _ in range(mix.long_count))

    def window(lo_hi: tuple[int, int]) -> tuple[int, ...]:
        length = rng.randint(*lo_hi)
        start = rng.randrange(len(corpus_ids) - length)
        return tuple(corpus_ids[start:start + length])

    timed = [(t, "short", window(mix.short_prompt), mix.short_output) for t in short_times]
    timed += [(t, "long", window(mix.long_prompt), mix.long_output) for t in long_times]
    timed.sort(key=lambda x: x[0])
    return [Item(i, kind, t, ids, out) for i, (t, kind, ids, out) in enumerate(timed)]


def workload_digest(items: list[Item]) -> str:
    text = json.dumps([[i.kind, round(i.send_s, 6), list(i.prompt_ids), i.output_len]
                       for i in items])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def corpus_token_ids() -> tuple[Any, list[int]]:
    """(the bundled model's tokenizer, the token ids of throughput.py's corpus)."""
    from kvscope.model.loader import bundled_model_path
    from kvscope.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(bundled_model_path())
    return tokenizer, list(tokenizer.encode(tput.corpus_text(), add_special_tokens=False))


# -- streaming with the text kept ---------------------------------------------------------
# stream_request (kvscope.bench.client) times every chunk but keeps no text; a transport
# that copies each response's bytes into the calling task's sink gives the text too,
# with the timing left exactly as stream_request measures it.

_SINK: contextvars.ContextVar[bytearray] = contextvars.ContextVar("disaggregation_sink")


class _TeeStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, sink: bytearray) -> None:
        self._stream = stream
        self._sink = sink

    async def __aiter__(self):
        async for chunk in self._stream:
            self._sink += chunk
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


class TeeTransport(httpx.AsyncHTTPTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        sink = _SINK.get(None)
        if sink is None:
            return response
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_TeeStream(response.stream, sink),
                              extensions=response.extensions)


def sse_text(raw: bytes) -> str:
    """The text a streamed completion carried, from its raw SSE bytes."""
    text = []
    for line in raw.decode("utf-8", "replace").splitlines():
        data = sse_data(line)
        if data and data != "[DONE]":
            text.append(chunk_text(json.loads(data)))
    return "".join(text)


def make_client(url: str) -> httpx.AsyncClient:
    """One connection per request in flight, no pool cap (as kvscope.bench.client's)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0),
                             transport=TeeTransport(limits=limits))


async def one_request(client: httpx.AsyncClient, prompt: str, output_len: int,
                      record: RequestRecord) -> str:
    """Stream one greedy completion into `record`; returns its text."""
    body = request_body(ENDPOINT, MODEL_NAME, BenchRequest(prompt, output_len),
                        temperature=0.0, ignore_eos=True)
    sink = bytearray()
    _SINK.set(sink)  # this task's own context (asyncio gives each task a copy)
    await stream_request(client, ENDPOINT, body, record)
    return sse_text(bytes(sink))


async def drive(url: str, items: list[Item], prompts: list[str]
                ) -> tuple[list[RequestRecord], list[str]]:
    """Send every item at its scheduled time (from now), all streamed concurrently."""
    async with make_client(url) as client:
        start = time.perf_counter()

        async def send(item: Item) -> tuple[RequestRecord, str]:
            delay = item.send_s - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            record = RequestRecord(item.index, item.output_len, len(item.prompt_ids),
                                   send_s=time.perf_counter() - start)
            text = await one_request(client, prompts[item.index], item.output_len, record)
            return record, text

        done = await asyncio.gather(*(send(item) for item in items))
    return [r for r, _ in done], [t for _, t in done]


async def warm_up(urls: list[str], short: str, long: str) -> None:
    """A short and a long request to each URL, one at a time."""
    async with make_client(urls[0]) as client:
        for url in urls:
            for prompt, tokens in ((short, 8), (long, 4)):
                record = RequestRecord(-1, tokens)
                body = request_body(ENDPOINT, MODEL_NAME, BenchRequest(prompt, tokens),
                                    0.0, True)
                await stream_request(client, f"{url}{ENDPOINT}", body, record)
                if not record.success:
                    raise RuntimeError(f"warm-up request to {url} failed: {record.error}")


# -- the processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(slots=True)
class Proc:
    name: str
    url: str
    popen: subprocess.Popen
    log_path: Path

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


class Cluster:
    """The processes of one configuration; `stop()` ends all of them (and anything they
    started: each runs in its own process group)."""

    def __init__(self, log_dir: Path, cores: list[int] | None) -> None:
        self.log_dir = log_dir
        self.cores = cores  # CPUs to pin to (None: no pinning)
        self.procs: list[Proc] = []

    def launch(self, name: str, cli: list[str], cpus: list[int] | None,
               threads: int) -> Proc:
        port = free_port()
        cmd = [sys.executable, "-m", "kvscope.cli", *cli, "--port", str(port)]
        if cpus is not None and self.cores is not None:
            cmd = ["taskset", "-c", ",".join(str(self.cores[c]) for c in cpus), *cmd]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads),
               "MKL_NUM_THREADS": str(threads)}
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(name, f"http://127.0.0.1:{port}", popen, log_path)
        self.procs.append(proc)
        return proc

    def wait_healthy(self, procs: list[Proc]) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        pending = list(procs)
        while pending:
            for proc in list(pending):
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n"
                                       f"{proc.tail()}")
                try:
                    if httpx.get(f"{proc.url}/health", timeout=2).status_code == 200:
                        pending.remove(proc)
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"{pending[0].name} did not answer /health in "
                                   f"{STARTUP_TIMEOUT_S:.0f} s:\n{pending[0].tail()}")
            if pending:
                time.sleep(0.5)

    def stop(self) -> None:
        for proc in self.procs:
            _signal_group(proc.popen, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            _signal_group(proc.popen, signal.SIGKILL)  # its children too, if any linger
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(10)
        self.procs.clear()


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)


def serve_cli(args: argparse.Namespace, role: str | None = None) -> list[str]:
    cli = ["serve", "--no-scope", "--dtype", "float32", "--quantization", "none",
           "--max-model-len", str(args.max_model_len),
           "--kv-cache-memory", str(args.kv_cache_memory),
           "--served-model-name", MODEL_NAME]
    if role is not None:
        cli += ["--kv-transfer-config",
                json.dumps({"kv_connector": "ZmqConnector", "kv_role": role})]
    return cli


def start_setup(setup: str, cluster: Cluster, args: argparse.Namespace
                ) -> tuple[str, list[Proc], list[str]]:
    """Start one configuration: (its front URL, its engine servers, URLs to warm up)."""
    if setup == "colocated":
        server = cluster.launch("serve", serve_cli(args), [0, 1], 2)
        cluster.wait_healthy([server])
        return server.url, [server], [server.url]
    if setup == "pd":
        prefill = cluster.launch("prefill", serve_cli(args, "kv_producer"), [0], 1)
        decode = cluster.launch("decode", serve_cli(args, "kv_consumer"), [1], 1)
        cluster.wait_healthy([prefill, decode])
        proxy = cluster.launch("pd-proxy", ["pd-proxy", "--prefill", prefill.url,
                                            "--decode", decode.url], None, 1)
        cluster.wait_healthy([proxy])
        return proxy.url, [prefill, decode], [proxy.url]
    if setup == "dp":
        replicas = [cluster.launch(f"replica{k}", serve_cli(args), [k], 1) for k in (0, 1)]
        cluster.wait_healthy(replicas)
        cli = ["router", "--policy", "least_load"]
        for replica in replicas:
            cli += ["--worker", replica.url]
        router = cluster.launch("router", cli, None, 1)
        cluster.wait_healthy([router])
        return router.url, replicas, [r.url for r in replicas] + [router.url]
    raise ValueError(setup)


def server_stats(servers: list[Proc]) -> dict[str, dict[str, Any]]:
    return {s.name: httpx.get(f"{s.url}/stats", timeout=30).json() for s in servers}


COUNTERS = ("num_steps", "num_computed_tokens", "num_computed_prompt_tokens",
            "num_generated_tokens", "num_preemptions", "prefix_cache_queries",
            "prefix_cache_hits")


def stats_delta(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
                ) -> dict[str, dict[str, Any]]:
    """Each server's counters over the run (the rest of /stats as it was at the end)."""
    return {name: {k: v - before[name].get(k, 0)
                   if k in COUNTERS or (k.startswith("kv_transfer_") and isinstance(v, int | float))
                   else v for k, v in end.items()}
            for name, end in after.items()}


def front_stats(setup: str, front: str) -> dict[str, Any]:
    path = {"pd": "/pd/workers", "dp": "/router/workers"}.get(setup)
    return httpx.get(f"{front}{path}", timeout=30).json() if path else {}


def front_delta(setup: str, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the pd-proxy or the router counted over the run (the warm-up left out)."""
    if setup == "pd":
        return {"pd_proxy": {k: v - before["counts"].get(k, 0)
                             for k, v in after["counts"].items()}}
    if setup == "dp":
        return {"router": {"policy": after["policy"], "requests_per_replica": [
            a["requests"] - b["requests"]
            for a, b in zip(after["workers"], before["workers"], strict=True)]}}
    return {}


def run_setup(setup: str, args: argparse.Namespace, items: list[Item], prompts: list[str],
              warm: tuple[str, str], cores: list[int] | None, log_dir: Path
              ) -> tuple[dict[str, Any], list[str | None]]:
    cluster = Cluster(log_dir / setup, cores)
    cluster.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        began = time.perf_counter()
        log(f"{setup}: starting")
        front, servers, warm_urls = start_setup(setup, cluster, args)
        startup = time.perf_counter() - began
        log(f"{setup}: up in {startup:.1f} s; warm-up")
        asyncio.run(warm_up(warm_urls, *warm))
        before, front_before = server_stats(servers), front_stats(setup, front)
        log(f"{setup}: {len(items)} requests over {items[-1].send_s:.1f} s")
        records, texts = asyncio.run(drive(front, items, prompts))
        front_after = front_stats(setup, front)
        if setup == "pd":
            time.sleep(1.5)  # the producer frees taken blocks on its next step
        after = server_stats(servers)
    finally:
        log(f"{setup}: stopping")
        cluster.stop()
    failed = [r for r in records if not r.success]
    if failed:
        log(f"{setup}: {len(failed)} request(s) failed, the first: {failed[0].error}")
    return {"setup": setup, "startup_s": startup, **summarize_run(records, items),
            "server_stats": stats_delta(before, after),
            **front_delta(setup, front_before, front_after),
            "records": [r.as_dict() | {"kind": items[r.index].kind,
                                       "scheduled_s": items[r.index].send_s}
                        for r in records]}, [t if r.success else None
                                             for r, t in zip(records, texts, strict=True)]


# -- the figures --------------------------------------------------------------------------


def summarize_run(records: list[RequestRecord], items: list[Item]) -> dict[str, Any]:
    """Per kind: TTFT and ITL (ms, mean / median / p99); overall output tokens/s over
    the span from the first arrival to the last finish."""
    ok = [r for r in records if r.success]
    first = min(r.send_s for r in records)
    wall = max((r.send_s + r.e2e_s for r in ok if r.e2e_s is not None), default=first) - first
    kinds = {}
    for kind in ("short", "long"):
        mine = [r for r in records if items[r.index].kind == kind]
        s = summarize(mine, wall)
        kinds[kind] = {"requests": len(mine), "completed": s.completed, "failed": s.failed,
                       "output_tokens": s.output_tokens,
                       "prompt_tokens": s.prompt_tokens,
                       "ttft_ms": dataclasses.asdict(s.ttft_ms),
                       "itl_ms": dataclasses.asdict(s.itl_ms),
                       "e2e_ms": dataclasses.asdict(s.e2e_ms)}
    overall = summarize(records, wall)
    lag = [r.send_s - items[r.index].send_s for r in records]
    return {"wall_s": wall, "output_tokens": overall.output_tokens,
            "output_tok_s": overall.output_throughput, "completed": overall.completed,
            "failed": overall.failed, "max_send_lag_ms": 1e3 * max(lag), **kinds}


def share_equal(a: list[str | None], b: list[str | None]) -> float:
    """The share of requests with the same text in both (a failed one, None, never)."""
    return sum(x is not None and x == y for x, y in zip(a, b, strict=True)) / max(1, len(a))


ROWS = [("short TTFT mean ms", "short", "ttft_ms", "mean"),
        ("short TTFT p99 ms", "short", "ttft_ms", "p99"),
        ("short ITL mean ms", "short", "itl_ms", "mean"),
        ("short ITL p99 ms", "short", "itl_ms", "p99"),
        ("long TTFT mean ms", "long", "ttft_ms", "mean"),
        ("long TTFT p99 ms", "long", "ttft_ms", "p99"),
        ("long ITL mean ms", "long", "itl_ms", "mean"),
        ("long ITL p99 ms", "long", "itl_ms", "p99")]


def render(results: dict[str, Any]) -> str:
    runs = {r["setup"]: r for r in results["runs"]}
    base = runs["colocated"]
    order = [s for s in SETUPS if s in runs]
    width = 20
    lines = [f"disaggregated prefill/decode, {results['workload']}; fp32; "
             f"{results['machine']}",
             f"CPU flags: {' '.join(results['cpu_flags']) or '(unknown)'}",
             f"pinning: {results['pinning']}", ""]
    lines.append(f"{'':<22}" + "".join(f"{LABELS[s]:>{width}}" for s in order))
    lines.append(f"{'':<22}" + "".join(f"{DESCRIBE[s]:>{width}}" for s in order))

    def cell(setup: str, value: float, base_value: float) -> str:
        if setup == "colocated" or not base_value or math.isnan(base_value):
            return f"{value:>{width}.1f}"
        return f"{value:>{width - 7}.1f} {value / base_value:>5.2f}x"

    for label, kind, metric, stat in ROWS:
        lines.append(f"{label:<22}" + "".join(
            cell(s, runs[s][kind][metric][stat], base[kind][metric][stat]) for s in order))
    lines.append(f"{'output tok/s':<22}" + "".join(
        cell(s, runs[s]["output_tok_s"], base["output_tok_s"]) for s in order))
    lines.append(f"{'failed requests':<22}" + "".join(
        f"{runs[s]['failed']:>{width}}" for s in order))
    lines.append(f"{'same text as coloc.':<22}" + "".join(
        f"{'-' if s == 'colocated' else format(results['same_text'][s], '.0%'):>{width}}"
        for s in order))
    lines.append("")
    if "pd" in runs:
        pd = runs["pd"]
        decode = pd["server_stats"]["decode"]
        prefill = pd["server_stats"]["prefill"]
        counts = pd["pd_proxy"]
        lines.append(
            f"P/D: the proxy prefilled {counts.get('prefilled', 0)} of "
            f"{counts.get('requests', 0)} requests ({counts.get('prefill_failures', 0)} "
            f"prefill failures); the decode server loaded {decode.get('kv_transfer_num_loaded')}"
            f" prompts' K/V ({decode.get('kv_transfer_bytes_loaded', 0) / 2**20:.0f} MiB, "
            f"{decode.get('kv_transfer_load_s', 0.0):.2f} s in loads), "
            f"{decode.get('kv_transfer_num_load_failures')} load failures, and computed "
            f"{decode.get('num_computed_prompt_tokens')} prompt tokens itself; the prefill "
            f"server computed {prefill.get('num_computed_prompt_tokens')}")
    if "dp" in runs:
        sent = runs["dp"]["router"]["requests_per_replica"]
        lines.append("DP: least_load sent " + " and ".join(map(str, sent))
                     + " requests to the two replicas")
    lag = max(r["max_send_lag_ms"] for r in runs.values())
    if lag > 50:
        lines.append(f"the client sent some requests up to {lag:.0f} ms late "
                     "(it shares the cores with the servers)")
    if results["load_before"] >= 0.5:
        lines.append(f"warning: the 1-minute load average was {results['load_before']:.2f} "
                     "before the run: other processes shared the cores, figures are noisy")
    lines.append("On 2 CPU cores this shows the shape of the trade-off (decode steps no "
                 "longer disturbed by long prefills, against a second hop, the K/V transfer "
                 "and half the cores on each side); these are not GPU figures.")
    return "\n".join(lines)


# -- the run ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few seconds of arrivals")
    p.add_argument("--duration", type=float, help="seconds of arrivals (60; quick: 4)")
    p.add_argument("--short-rate", type=float, help="short requests per second (1.5; quick: 1.0)")
    p.add_argument("--long-count", type=int, help="long-prompt requests (12; quick: 1)")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--kv-cache-memory", type=int, default=256 << 20,
                   help="bytes for each server's KV pool")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--setups", default=",".join(SETUPS),
                   help="which configurations to run, comma separated (colocated first)")
    p.add_argument("--save", type=Path, help="write every figure as JSON here")
    args = p.parse_args(argv)
    mix = QUICK if args.quick else FULL
    args.mix = dataclasses.replace(
        mix, duration_s=args.duration or mix.duration_s,
        short_rate=args.short_rate or mix.short_rate,
        long_count=mix.long_count if args.long_count is None else args.long_count)
    args.setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    if not args.setups or args.setups[0] != "colocated" or set(args.setups) - set(SETUPS):
        p.error(f"--setups: colocated first, then any of {', '.join(SETUPS[1:])}")
    return args


def pin_cores() -> list[int] | None:
    """The two CPUs to pin to, when taskset exists and this process may use >= 2."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if shutil.which("taskset") is None or len(cores) < 2:
        return None
    return cores[:2]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # a SIGTERM still runs the finally blocks, so no server is left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_before = os.getloadavg()[0]
    if load_before >= 0.5:
        log(f"warning: load average {load_before:.2f} before starting; figures will be noisy")
    tokenizer, corpus = corpus_token_ids()
    items = make_workload(corpus, args.mix, args.seed)
    prompts = [tokenizer.decode(list(i.prompt_ids)) for i in items]
    # warm-up prompts: the corpus backwards, never a window of the workload
    backwards = corpus[::-1]
    warm = (tokenizer.decode(backwards[:40]), tokenizer.decode(backwards[40:640]))
    cores = pin_cores()
    mix = args.mix
    n_short = sum(i.kind == "short" for i in items)
    runs, texts = [], {}
    with tempfile.TemporaryDirectory(prefix="kvscope-disagg-") as log_dir:
        for setup in args.setups:
            result, texts[setup] = run_setup(setup, args, items, prompts, warm, cores,
                                             Path(log_dir))
            runs.append(result)
    results = {
        "workload": f"{n_short} short ({mix.short_prompt[0]}-{mix.short_prompt[1]} prompt "
                    f"tokens, {mix.short_output} out, Poisson {mix.short_rate:g}/s) + "
                    f"{len(items) - n_short} long ({mix.long_prompt[0]}-{mix.long_prompt[1]} "
                    f"prompt, {mix.long_output} out) over {mix.duration_s:g} s",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "cpu_flags": simd_flags(),
        "pinning": (f"taskset, CPUs {cores[0]} and {cores[1]}" if cores else
                    "none (no taskset or fewer than 2 CPUs): OMP_NUM_THREADS only"),
        "load_before": load_before, "mix": dataclasses.asdict(mix), "seed": args.seed,
        "workload_sha256": workload_digest(items),
        "server_options": {"dtype": "float32", "quantization": "none",
                           "max_model_len": args.max_model_len,
                           "kv_cache_memory": args.kv_cache_memory},
        "runs": runs,
        "same_text": {s: share_equal(texts["colocated"], texts[s]) for s in args.setups
                      if s != "colocated"},
    }
    print(render(results))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
