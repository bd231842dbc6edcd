"""Benchmark clients. `kvscope bench serve` replays a workload against any
OpenAI-compatible server and reports latency and throughput (see serve_bench);
`kvscope bench sweep` measures a grid of engine settings in process (sweep, tuning)."""
