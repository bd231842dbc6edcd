"""The `kvscope` command line: `kvscope serve` runs the OpenAI-compatible server with
the scope at `/`, `kvscope scope` the same for exploring (and replaying a recorded
run), `kvscope router` spreads requests over several servers, `kvscope generate` runs
prompts offline, `kvscope trace` turns a recorded run into a Perfetto / Chrome trace,
`kvscope bench serve` benchmarks a server, `kvscope bench sweep` measures a grid of
engine settings (the Tuning Lab's curve)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

EXAMPLE_PROMPTS = [
    "What is a KV cache, in one sentence?",
    "Write a haiku about paged memory.",
    "Explain continuous batching to a new engineer.",
    "Name three planets and one fact about each.",
    "Why does decoding one token at a time leave a CPU underused?",
    "Give me a short recipe for pancakes.",
]


def node_defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    """--nnodes, --node-rank, --master-addr and --master-port from the environment:
    NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT, or what torchrun sets for each
    process it starts (env:// rendezvous: `torchrun --nnodes N --nproc-per-node 1
    --node-rank R --master-addr A --master-port P -m kvscope.cli serve -tp T`: one
    kvscope serve per node, WORLD_SIZE / LOCAL_WORLD_SIZE nodes, GROUP_RANK this one)."""
    nnodes = environ.get("NNODES")
    if nnodes is None and "WORLD_SIZE" in environ:
        nnodes = str(int(environ["WORLD_SIZE"]) // int(environ.get("LOCAL_WORLD_SIZE", "1")))
    return {"nnodes": int(nnodes or 1),
            "node_rank": int(environ.get("NODE_RANK") or environ.get("GROUP_RANK") or 0),
            "master_addr": environ.get("MASTER_ADDR", "127.0.0.1"),
            "master_port": int(environ.get("MASTER_PORT", 29500))}


def _engine_args(parser: argparse.ArgumentParser) -> None:
    nodes = node_defaults(os.environ)
    parser.add_argument("--model", default=None,
                        help="HF model directory or .gguf file (default: bundled SmolLM2-135M)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=128)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--long-prefill-token-threshold", type=int, default=0,
                        help="cap each prefill chunk at this many tokens (0: no cap)")
    memory = parser.add_mutually_exclusive_group()
    memory.add_argument("--kv-cache-memory", type=int, default=None,
                        help="bytes for the KV pool (default 1 GiB)")
    memory.add_argument("--kv-cache-memory-fraction", type=float, default=None,
                        help="fraction of available memory for the KV pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-enable-prefix-caching", dest="enable_prefix_caching",
                        action="store_false", help="turn the prefix cache off")
    parser.add_argument("--preemption-mode", choices=["recompute", "swap"], default="recompute")
    parser.add_argument("--swap-space", type=int, default=None,
                        help="bytes of swap space for --preemption-mode swap (default 256 MiB)")
    parser.add_argument("--scheduling-policy", dest="policy", choices=["fcfs", "priority"],
                        default="fcfs")
    parser.add_argument("-tp", "--tensor-parallel-size", type=int, default=1,
                        help="shard the model over this many worker processes (torch."
                             "distributed, gloo on CPU); 1: run it in this process")
    parser.add_argument("--distributed-executor-backend", choices=["mp", "ray"], default="mp",
                        help="how the tp × pp worker processes start: mp (subprocesses) or "
                             "ray (actors in a Ray placement group; pip install "
                             "'kvscope[ray]'; joins $RAY_ADDRESS or starts a local Ray)")
    parser.add_argument("-pp", "--pipeline-parallel-size", type=int, default=1,
                        help="split the layers into this many stages, each on its own "
                             "worker processes, with up to that many steps in flight")
    parser.add_argument("--nnodes", type=int, default=nodes["nnodes"],
                        help="machines the tensor-parallel ranks are spread over (each "
                             "runs tp / nnodes of them)")
    parser.add_argument("--node-rank", type=int, default=nodes["node_rank"],
                        help="this machine's index: 0 runs the engine and the API, the "
                             "others only their ranks")
    parser.add_argument("--master-addr", default=nodes["master_addr"],
                        help="where the ranks meet (node 0's address)")
    parser.add_argument("--master-port", type=int,
                        default=nodes["master_port"])
    parser.add_argument("--quantization", choices=["auto", "none", "int8", "int4"],
                        default="auto",
                        help="auto: keep a GGUF's Q4_0/Q4_1/Q8_0/Q4_K/Q5_0/Q6_K weights quantized; "
                             "none: dequantize at load; int8/int4: quantize every linear "
                             "at load")
    parser.add_argument("--quantized-activations", choices=["int8", "float"], default="int8",
                        help="what 4-bit linears multiply with at decode: int8 (each "
                             "row in groups of 32, integer dot products, as llama.cpp) or "
                             "float (float32/bf16 activations, slower at batch 1)")
    parser.add_argument("--kv-transfer-config", type=_json_object, default=None,
                        help='disaggregated prefill/decode as JSON, e.g. \'{"kv_connector": '
                             '"ZmqConnector", "kv_role": "kv_producer"}\' (connectors: '
                             'SharedStorageConnector, ZmqConnector; roles: kv_producer, '
                             'kv_consumer, kv_both)')
    parser.add_argument("--speculative-config", type=_json_object, default=None,
                        help='speculative decoding as JSON, e.g. \'{"method": "ngram", '
                             '"num_speculative_tokens": 4}\' (methods: ngram, draft_model '
                             'with "model", self_draft with "draft_layers")')


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def engine_options(args: argparse.Namespace) -> dict:
    options = {
        "dtype": args.dtype, "block_size": args.block_size, "max_model_len": args.max_model_len,
        "max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": args.max_num_batched_tokens,
        "seed": args.seed, "long_prefill_token_threshold": args.long_prefill_token_threshold,
        "model": args.model, "enable_prefix_caching": args.enable_prefix_caching,
        "preemption_mode": args.preemption_mode, "policy": args.policy,
        "tensor_parallel_size": args.tensor_parallel_size,
        "pipeline_parallel_size": args.pipeline_parallel_size,
        "distributed_executor_backend": args.distributed_executor_backend,
        "nnodes": args.nnodes, "node_rank": args.node_rank,
        "master_addr": args.master_addr, "master_port": args.master_port,
        "quantization": args.quantization,
        "quantized_activations": args.quantized_activations,
    }
    if args.speculative_config is not None:
        options["speculative_config"] = args.speculative_config
    if args.kv_transfer_config is not None:
        options["kv_transfer_config"] = args.kv_transfer_config
    if args.swap_space is not None:
        options["swap_space"] = args.swap_space
    if args.kv_cache_memory is not None:
        options["kv_cache_memory"] = args.kv_cache_memory
    if args.kv_cache_memory_fraction is not None:
        options["kv_cache_memory_fraction"] = args.kv_cache_memory_fraction
    return options


def cmd_generate(args: argparse.Namespace) -> int:
    from kvscope import LLM, SamplingParams
    from kvscope.events import JsonlRecorder

    print("Loading model...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    recorder = JsonlRecorder(args.record) if args.record else None
    llm = LLM(load_progress=True, sink=recorder, **engine_options(args))
    loaded = llm.engine.loaded
    print(f"Loaded {loaded.path.name} ({loaded.arch.architecture}, {llm.config.dtype}, "
          f"{llm.engine.num_blocks} KV blocks) in {time.perf_counter() - t0:.1f}s",
          file=sys.stderr, flush=True)
    prompts = args.prompt or EXAMPLE_PROMPTS
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p,
                            max_tokens=args.max_tokens, seed=args.sampling_seed)
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    t1 = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=True) if args.chat else \
        llm.generate(prompts, params, use_tqdm=True)
    elapsed = time.perf_counter() - t1
    for prompt, out in zip(prompts, outputs, strict=True):
        completion = out.outputs[0]
        print(f"\n### {prompt}\n{completion.text.strip()}\n[{len(completion.token_ids)} tokens, "
              f"{completion.finish_reason}]")
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    print(f"\n{len(outputs)} requests, {prompt_tokens} prompt + {generated} generated tokens in "
          f"{elapsed:.2f}s: {generated / elapsed:.1f} output tok/s, "
          f"{(prompt_tokens + generated) / elapsed:.1f} total tok/s")
    if recorder is not None:
        recorder.close()
        print(f"events recorded to {args.record}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from kvscope.scope.lab_limits import LabLimits
    from kvscope.serve.server import serve

    if args.data_parallel_replica:  # started by a data-parallel front: end with it, and
        from kvscope.worker.worker import die_with_parent  # never start replicas itself

        die_with_parent()
    elif args.data_parallel_size > 1:
        from kvscope.serve.data_parallel import serve_data_parallel

        if args.record is not None or getattr(args, "replay", None) is not None:
            raise ValueError("--record and --replay are about one engine's events; they do "
                             "not go with --data-parallel-size (each replica has its own)")
        if args.nnodes > 1:
            raise ValueError("--data-parallel-size does not combine with --nnodes yet")
        serve_data_parallel(args.argv, args.data_parallel_size, args.host, args.port,
                            args.api_key, args.max_body_bytes)
        return 0
    if args.node_rank > 0:  # this machine runs tensor-parallel ranks, not the engine
        from kvscope.config import EngineConfig
        from kvscope.distributed.nodes import run_ranks_of_this_node

        return run_ranks_of_this_node(EngineConfig.from_kwargs(**engine_options(args)))
    if args.no_scope and getattr(args, "replay", None) is not None:
        raise ValueError("--replay plays a run in the scope; it does not go with --no-scope")
    lab = LabLimits(queue=args.scope_lab_queue, max_tokens=args.scope_lab_max_tokens,
                    timeout_s=args.scope_lab_timeout,
                    yield_to_serving=args.scope_lab_yield)
    serve(engine_options(args), args.host, args.port, args.api_key, args.served_model_name,
          args.max_waiting_requests, args.max_body_bytes, record=args.record,
          replay=getattr(args, "replay", None), public_metrics=args.allow_unauthenticated_metrics,
          scope=not args.no_scope, lab_limits=lab)
    return 0


def cmd_router(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from kvscope.serve.router.app import build_router_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = build_router_app(args.worker, args.policy, args.api_key, args.worker_api_key,
                           args.health_interval, read_timeout_s=args.read_timeout)
    logging.getLogger("kvscope.router").info(
        "routing to %d worker(s) by %s at http://%s:%d/v1", len(args.worker), args.policy,
        args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _router_parser(sub: argparse._SubParsersAction) -> None:
    from kvscope.serve.router.policies import POLICIES

    router = sub.add_parser("router", help="an OpenAI-compatible front spreading requests "
                                           "over several servers (data parallelism)")
    router.add_argument("--worker", action="append", required=True, metavar="URL",
                        help="a server's base URL, e.g. http://127.0.0.1:8001 (repeatable)")
    router.add_argument("--policy", choices=POLICIES, default="cache_aware")
    router.add_argument("--host", default="127.0.0.1")
    router.add_argument("--port", type=int, default=8080)
    router.add_argument("--api-key", default=os.environ.get("KVSCOPE_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on every route but "
                             "/health (default: $KVSCOPE_API_KEY, else no key)")
    router.add_argument("--worker-api-key", default=os.environ.get("KVSCOPE_WORKER_API_KEY"),
                        help="the key the workers want (default: $KVSCOPE_WORKER_API_KEY)")
    router.add_argument("--health-interval", type=float, default=2.0,
                        help="seconds between two /health checks of every worker")
    router.add_argument("--read-timeout", type=float, default=600.0,
                        help="seconds a worker may stay silent (no answer, no stream chunk) "
                             "before its request fails with 502")
    router.set_defaults(func=cmd_router)


def cmd_pd_proxy(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from kvscope.serve.router.pd_proxy import build_pd_proxy_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = build_pd_proxy_app(args.prefill, args.decode, args.api_key, args.worker_api_key,
                             args.health_interval, read_timeout_s=args.read_timeout)
    logging.getLogger("kvscope.pd_proxy").info(
        "prefill on %s, decode on %s, at http://%s:%d/v1", ", ".join(args.prefill),
        ", ".join(args.decode), args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _pd_proxy_parser(sub: argparse._SubParsersAction) -> None:
    proxy = sub.add_parser("pd-proxy", help="disaggregated prefill/decode: each request "
                                            "prefilled on one server, decoded on another")
    proxy.add_argument("--prefill", action="append", required=True, metavar="URL",
                       help="a prefill server (--kv-transfer-config with kv_role "
                            "kv_producer), e.g. http://127.0.0.1:8001 (repeatable)")
    proxy.add_argument("--decode", action="append", required=True, metavar="URL",
                       help="a decode server (kv_role kv_consumer) (repeatable)")
    proxy.add_argument("--host", default="127.0.0.1")
    proxy.add_argument("--port", type=int, default=8080)
    proxy.add_argument("--api-key", default=os.environ.get("KVSCOPE_API_KEY"),
                       help="require 'Authorization: Bearer KEY' on every route but /health")
    proxy.add_argument("--worker-api-key", default=os.environ.get("KVSCOPE_WORKER_API_KEY"),
                       help="the key the servers want (default: $KVSCOPE_WORKER_API_KEY)")
    proxy.add_argument("--health-interval", type=float, default=2.0)
    proxy.add_argument("--read-timeout", type=float, default=600.0,
                       help="seconds a server may stay silent before the request fails")
    proxy.set_defaults(func=cmd_pd_proxy)


def cmd_trace(args: argparse.Namespace) -> int:
    from kvscope.perfetto import export_chrome_trace

    out = args.output or args.events.with_suffix(".trace.json")
    steps = export_chrome_trace(args.events, out)
    print(f"wrote {out}: {steps} steps (open it in Perfetto or chrome://tracing)")
    return 0


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the OpenAI-compatible HTTP server (scope at /)")
    _server_args(serve)
    scope = sub.add_parser("scope", help="run the scope: live monitor, lessons, replay "
                                         "(with the same OpenAI API)")
    _server_args(scope)
    scope.add_argument("--replay", type=Path, default=None,
                       help="a run recorded with --record, for the monitor to play")
    trace = sub.add_parser("trace", help="turn a recorded run (JSONL) into a Perfetto / "
                                         "Chrome trace")
    trace.add_argument("events", type=Path)
    trace.add_argument("-o", "--output", type=Path, default=None)
    trace.set_defaults(func=cmd_trace)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more; got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more; got {value}")
    return value


def _server_args(serve: argparse.ArgumentParser) -> None:
    from kvscope.engine.async_engine import DEFAULT_MAX_WAITING_REQUESTS
    from kvscope.scope.lab_limits import LabLimits
    from kvscope.serve.app import DEFAULT_MAX_BODY_BYTES

    lab = LabLimits()  # its defaults (a slots dataclass keeps them on instances only)
    _engine_args(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=os.environ.get("KVSCOPE_API_KEY"),
                       help="require 'Authorization: Bearer KEY' on every route but /health, "
                            "the scope's API included; its pages ask for the key "
                            "(default: $KVSCOPE_API_KEY, else no key)")
    serve.add_argument("--allow-unauthenticated-metrics", action="store_true",
                       help="with --api-key, let /metrics answer without the key "
                            "(for scrapers that cannot send it)")
    serve.add_argument("--no-scope", action="store_true",
                       help="serve no scope routes at all (no pages, no lesson runs, no "
                            "live events)")
    serve.add_argument("--scope-lab-queue", type=_non_negative, default=lab.queue,
                       help="lesson runs that may wait behind the running one; more get 429")
    serve.add_argument("--scope-lab-max-tokens", type=_positive, default=lab.max_tokens,
                       help="tokens one lesson run may compute before it is stopped")
    serve.add_argument("--scope-lab-timeout", type=float, default=lab.timeout_s,
                       help="seconds one lesson run may take before it is stopped")
    serve.add_argument("--no-scope-lab-yield", dest="scope_lab_yield", action="store_false",
                       help="let lesson runs step while the server has requests to serve "
                            "(by default they wait, so real traffic goes first)")
    serve.add_argument("--served-model-name", default=None,
                       help="the model name clients send (default: from the model file)")
    serve.add_argument("--max-waiting-requests", type=int,
                       default=DEFAULT_MAX_WAITING_REQUESTS,
                       help="answer 503 when this many requests are already waiting")
    serve.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                       help="answer 413 to larger request bodies")
    serve.add_argument("--record", type=Path, default=None,
                       help="write every engine event to this JSONL file")
    serve.add_argument("-dp", "--data-parallel-size", type=_positive, default=1,
                       help="run this many engine replicas (processes, each with its own KV "
                            "pool) behind this server, each request going to the one with "
                            "the fewest in flight")
    serve.add_argument("--data-parallel-replica", action="store_true",
                       help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    from kvscope.bench.serve_bench import add_bench_parser

    parser = argparse.ArgumentParser(prog="kvscope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _router_parser(sub)
    _pd_proxy_parser(sub)
    gen = sub.add_parser("generate", help="complete prompts offline and print throughput")
    _engine_args(gen)
    gen.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    gen.add_argument("--max-tokens", type=int, default=96)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--sampling-seed", type=int, default=None)
    gen.add_argument("--record", type=Path, default=None,
                     help="write every engine event to this JSONL file")
    gen.add_argument("--no-chat", dest="chat", action="store_false",
                     help="send prompts as raw text instead of through the chat template")
    gen.set_defaults(func=cmd_generate)
    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]  # after the command: what a data-parallel replica is started with
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"kvscope: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
