"""`kvscope serve` as a user runs it: a subprocess that loads the bundled model, says
where it listens, answers, and exits cleanly on SIGTERM and on SIGINT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_starts_answers_and_stops_cleanly(stop_signal):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "kvscope.cli", "serve", "--port", str(port),
         "--kv-cache-memory", str(32 << 20), "--max-model-len", "512",
         "--served-model-name", "tiny"],
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
        response = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                              json={"model": "tiny", "prompt": "Hi", "max_tokens": 3})
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] >= 1
        process.send_signal(stop_signal)
        rest, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, "".join(log) + rest
    assert "kvscope stopped" in rest
