"""`kvscope serve` as a user runs it: a subprocess that loads the bundled model, says
where it listens, answers, and exits cleanly on SIGTERM and on SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from kvscope import SamplingParams
from tests.server_harness import free_port

SPECULATIVE = '{"method": "ngram", "num_speculative_tokens": 3}'


@pytest.mark.parametrize("stop_signal, extra", [
    (signal.SIGTERM, []), (signal.SIGINT, ["--speculative-config", SPECULATIVE]),
    (signal.SIGTERM, ["--tensor-parallel-size", "2", "--dtype", "float32"])],
    ids=["sigterm", "sigint-speculative", "sigterm-tp2"])
def test_serve_starts_answers_and_stops_cleanly(stop_signal, extra, make_llm):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KVSCOPE_API_KEY": "cli-key"}
    auth = {"Authorization": "Bearer cli-key"}
    process = subprocess.Popen(
        [sys.executable, "-m", "kvscope.cli", "serve", "--port", str(port),
         "--kv-cache-memory", str(32 << 20), "--max-model-len", "512",
         "--served-model-name", "tiny", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    log = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        for line in process.stdout:
            log.append(line)
            if "kvscope is ready" in line:
                break
            assert time.monotonic() < deadline, "".join(log)
        ready = log[-1]
        assert f"http://127.0.0.1:{port}/v1" in ready and "tiny" in ready
        assert any("Dequantizing GGUF" in line for line in log)  # the load progress bar
        body = {"model": "tiny", "prompt": "Hi", "max_tokens": 3}
        url = f"http://127.0.0.1:{port}"
        assert httpx.post(f"{url}/v1/completions", timeout=60, json=body).status_code == 401
        assert httpx.get(f"{url}/scope/api/info", timeout=10).status_code == 401
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        response = httpx.post(f"{url}/v1/completions", timeout=60, json=body, headers=auth)
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] >= 1
        workers = psutil.Process(process.pid).children(recursive=True)
        if "--tensor-parallel-size" in extra:  # two ranks, and the same text as one process
            assert len(workers) == 2
            greedy = {**body, "temperature": 0, "max_tokens": 12, "ignore_eos": True}
            text = httpx.post(f"{url}/v1/completions", timeout=60, json=greedy,
                              headers=auth).json()["choices"][0]["text"]
            offline = make_llm(max_model_len=512).generate(
                "Hi", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
            assert text == offline[0].outputs[0].text
            workers[-1].kill()  # a rank dies: requests fail cleanly, /health says so
            failed = httpx.post(f"{url}/v1/completions", timeout=60, json=greedy, headers=auth)
            assert failed.status_code == 503, failed.text
            assert failed.json()["error"]["code"] == "engine_unavailable"
            assert httpx.get(f"{url}/health", timeout=10).status_code == 503
        if "--speculative-config" in extra:  # a prompt that repeats itself: the n-gram drafts
            response = httpx.post(f"{url}/v1/completions", timeout=60, headers=auth, json={
                "model": "tiny", "prompt": "one two three four, one two three four, one two",
                "max_tokens": 16, "temperature": 0})
            assert response.status_code == 200
            metrics = httpx.get(f"{url}/metrics", timeout=10, headers=auth).text
            drafted = [line for line in metrics.splitlines()
                       if line.startswith("kvscope:spec_decode_num_draft_tokens_total")]
            assert drafted and float(drafted[0].split()[-1]) > 0, metrics
        process.send_signal(stop_signal)
        rest, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, "".join(log) + rest
    assert "kvscope stopped" in rest
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


def test_serve_refuses_a_bad_speculative_config():
    process = subprocess.run(
        [sys.executable, "-m", "kvscope.cli", "serve", "--speculative-config", "{method: ngram}"],
        capture_output=True, text=True, timeout=60)
    assert process.returncode == 2
    assert "--speculative-config: not valid JSON" in process.stderr


def test_server_options_and_their_defaults():
    from kvscope.cli import build_parser
    from kvscope.scope.lab_limits import LabLimits

    args = build_parser().parse_args(["serve"])
    defaults = LabLimits()
    assert (args.scope_lab_queue, args.scope_lab_max_tokens, args.scope_lab_timeout) == (
        defaults.queue, defaults.max_tokens, defaults.timeout_s) == (2, 16384, 30.0)
    assert args.scope_lab_yield and not args.no_scope
    assert not args.allow_unauthenticated_metrics and args.tensor_parallel_size == 1
    args = build_parser().parse_args(
        ["serve", "--scope-lab-queue", "0", "--no-scope-lab-yield", "--no-scope", "-tp", "2",
         "--allow-unauthenticated-metrics"])
    assert args.scope_lab_queue == 0 and not args.scope_lab_yield and args.no_scope
    assert args.tensor_parallel_size == 2 and args.allow_unauthenticated_metrics
