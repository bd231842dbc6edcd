"""The scope's HTTP API on a real server: lesson runs on a fresh small engine, the live
event stream of the serving engine, replay of a recording, KV sizes, and the
Perfetto export of a recorded run."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from kvscope import SamplingParams
from kvscope.events import JsonlRecorder, read_jsonl
from kvscope.perfetto import export_chrome_trace, to_chrome_trace
from kvscope.scope.lab import LabRunRequest, run_lab
from kvscope.scope.lab_limits import LabBudget, LabLimits, LabStopped
from tests.server_harness import MODEL_NAME, running_server

PROMPTS = ["The tallest mountain on Earth is", "A paged KV cache stores"]


@pytest.fixture(scope="module")
def server(loaded_fp32):
    with running_server(loaded_fp32) as running:
        yield running


def lab(server, **body):
    return httpx.post(server.url + "/scope/api/lab/run", json=body, timeout=120)


def test_lab_run_returns_the_runs_events_and_frees_everything(server):
    steps_before = httpx.get(server.url + "/stats").json()["num_steps"]
    r = lab(server, prompts=PROMPTS, max_tokens=6, block_size=4, num_blocks=16)
    assert r.status_code == 200
    run = r.json()
    events = run["events"]
    assert events[0]["kind"] == "engine_started"
    assert events[0]["num_blocks"] == 16 and events[0]["block_size"] == 4
    assert [o["request_id"] for o in run["outputs"]] == ["0", "1"]
    assert all(len(o["token_ids"]) == 6 for o in run["outputs"])
    # request 0's table, rebuilt from its allocation events, covers prompt + 5 computed
    allocated = [b for e in events if e["kind"] == "blocks_allocated" and e["request_id"] == "0"
                 for b in e["block_ids"]]
    n_prompt = len(run["outputs"][0]["prompt_token_ids"])
    assert len(allocated) == -(-(n_prompt + 5) // 4)
    assert len(set(allocated)) == len(allocated)
    assert run["final"]["tables"] == {}
    assert run["final"]["num_free_blocks"] == 16
    assert set(run["final"]["refcounts"]) == {0}
    # the lesson's engine is private: the server's own engine did nothing
    assert httpx.get(server.url + "/stats").json()["num_steps"] == steps_before


def test_lab_run_with_a_tiny_pool_preempts_and_arrivals_are_staggered(server):
    r = lab(server, prompts=PROMPTS * 2, max_tokens=24, block_size=4, num_blocks=12,
            preemption_mode="swap", arrive_at_step=[0, 0, 3, 3])
    assert r.status_code == 200
    events = r.json()["events"]
    arrived = {e["request_id"]: e["step"] for e in events if e["kind"] == "request_arrived"}
    assert arrived == {"0": 0, "1": 0, "2": 3, "3": 3}
    assert any(e["kind"] == "swapped_out" for e in events)


@pytest.mark.parametrize("body, param_text", [
    ({"prompts": []}, "prompts"),
    ({"prompts": ["hi"], "block_size": 0}, "block_size"),
    ({"prompts": ["hi"], "arrive_at_step": [0, 1]}, "arrive_at_step"),
    ({"prompts": ["hi"], "nonsense": 1}, "nonsense"),
    ({"prompts": ["word " * 300]}, "at most 256"),
    ({"prompts": [PROMPTS[0]], "num_blocks": 2, "block_size": 1}, "max_model_len"),
])
def test_lab_run_rejects_bad_input_with_an_openai_error(server, body, param_text):
    r = lab(server, **body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert param_text in json.dumps(error)
    assert httpx.get(server.url + "/health").status_code == 200


REPEATING = "one two three four five, one two three four five, one two three four five,"


def test_lab_run_with_speculation_returns_verified_drafts(server):
    r = lab(server, prompts=[REPEATING], max_tokens=12, block_size=4, num_blocks=32,
            enable_prefix_caching=False, compare_plain=True,
            speculative_config={"method": "ngram", "num_speculative_tokens": 3,
                                "prompt_lookup_max": 3})
    assert r.status_code == 200, r.text
    run = r.json()
    events = run["events"]
    verified = [e for e in events if e["kind"] == "drafts_verified"]
    assert verified and all(e["method"] == "ngram" and e["request_id"] == "0" for e in verified)
    chunks = {e["step"]: e["batch"][0] for e in events if e["kind"] == "step_end"}
    for e in verified:
        n = e["num_accepted"]
        assert 1 <= len(e["draft_token_ids"]) <= 3
        assert e["token_ids"][:n] == e["draft_token_ids"][:n] and len(e["token_ids"]) == n + 1
        chunk = chunks[e["step"]]
        assert chunk["phase"] == "verify"
        assert chunk["num_draft_tokens"] == len(e["draft_token_ids"])
        # the token_emitted events of the verified tokens follow it
        at = events.index(e)
        emitted = [x["token_id"] for x in events[at + 1:at + 1 + len(e["token_ids"])]]
        assert emitted == e["token_ids"]
    assert sum(e["num_accepted"] for e in verified) > 0
    # every token a verification saw has its text; the plain run gave the same tokens
    seen = {t for e in verified for t in e["draft_token_ids"] + e["token_ids"]}
    assert seen <= {int(t) for t in run["token_texts"]}
    tokens = run["outputs"][0]["token_ids"]
    assert run["plain"]["outputs"][0]["token_ids"] == tokens and run["plain"]["identical"] == [True]
    assert len(tokens) == 12
    assert run["final"]["num_free_blocks"] == 32


@pytest.mark.parametrize("body, param_text", [
    ({"speculative_config": {"method": "draft_model", "num_speculative_tokens": 2}},
     "speculative_config.method"),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 0}},
     "speculative_config.num_speculative_tokens"),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 9}},
     "speculative_config.num_speculative_tokens"),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 2, "draft_layers": 4}},
     "draft_layers applies to method 'self_draft' only"),
    ({"speculative_config": {"method": "self_draft", "num_speculative_tokens": 2,
                             "prompt_lookup_max": 2}},
     "prompt_lookup_max applies to method 'ngram' only"),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 2, "bogus": 1}},
     "speculative_config.bogus"),
    ({"speculative_config": {"method": "self_draft", "num_speculative_tokens": 2,
                             "draft_layers": 30}},
     "draft_layers must be below the model's 30 layers"),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 2}, "n": 2},
     "does not combine with n > 1"),
    ({"compare_plain": True}, "compare_plain"),
])
def test_lab_run_rejects_bad_speculative_options(server, body, param_text):
    r = lab(server, prompts=[REPEATING], max_tokens=4, **body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert param_text in error["message"]


def test_kv_sizes_from_the_loaded_config(server):
    sizes = httpx.get(server.url + "/scope/api/kv-sizes").json()
    loaded = sizes["loaded"]
    assert (loaded["num_layers"], loaded["num_kv_heads"], loaded["head_dim"]) == (30, 3, 64)
    assert loaded["kv_bytes_per_token"] == 2 * 30 * 3 * 64 * 4  # fp32 in this test
    llama8b = next(m for m in sizes["models"] if m["name"] == "Llama-3.1-8B")
    assert llama8b["kv_bytes_per_token"] == 131072
    assert "config" in llama8b["source"]


def test_info_and_replay_absent(server):
    info = httpx.get(server.url + "/scope/api/info").json()
    assert info["model"] == MODEL_NAME and info["live"] is True and info["replay"] is False
    assert info["engine"]["num_layers"] == 30
    r = httpx.get(server.url + "/scope/api/replay")
    assert r.status_code == 404 and "replay" in r.json()["error"]["message"]


def read_live_until_finished(server, collected: list[dict], ready: threading.Event) -> None:
    with httpx.stream("GET", server.url + "/scope/api/live", timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[len("data: "):])
            collected.append(event)
            if event["kind"] == "snapshot":
                ready.set()
            if event["kind"] == "request_finished":
                return


def test_live_stream_starts_with_a_snapshot_then_follows_the_engine(server):
    collected: list[dict] = []
    ready = threading.Event()
    reader = threading.Thread(target=read_live_until_finished, args=(server, collected, ready))
    reader.start()
    assert ready.wait(30)
    r = httpx.post(server.url + "/v1/completions", timeout=60, json={
        "model": MODEL_NAME, "prompt": PROMPTS[0], "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200
    reader.join(60)
    assert collected[0]["kind"] == "snapshot"
    assert collected[0]["tables"] == {}
    kinds = [e["kind"] for e in collected]
    assert kinds[1] == "request_arrived"
    tokens = [e["token_id"] for e in collected if e["kind"] == "token_emitted"]
    text = "".join(e["text"] for e in collected if e["kind"] == "token_emitted")
    assert len(tokens) == 5
    assert text == r.json()["choices"][0]["text"]
    # nobody listens any more: the engine stops building events
    for _ in range(100):
        if server.live.num_listeners == 0:
            break
        threading.Event().wait(0.05)
    assert server.live.num_listeners == 0


def test_recording_replays_and_exports_one_slice_per_step(make_llm, loaded_fp32, tmp_path):
    path = tmp_path / "run.jsonl"
    recorder = JsonlRecorder(path)
    llm = make_llm(sink=recorder)
    llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=7))
    recorder.close()
    events = read_jsonl(path)
    num_steps = sum(e["kind"] == "step_end" for e in events)
    trace_path = tmp_path / "run.trace.json"
    assert export_chrome_trace(path, trace_path) == num_steps
    trace = json.loads(trace_path.read_text())
    slices = [t for t in trace["traceEvents"] if t["ph"] == "X"]
    steps = [t for t in slices if t["cat"] == "step"]
    assert [t["name"] for t in steps] == [f"step {i}" for i in range(num_steps)]
    assert all(t["dur"] >= 0 and isinstance(t["ts"], float | int) for t in slices)
    chunks = [t for t in slices if t["cat"] == "request_chunk"]
    assert len(chunks) == sum(len(e["batch"]) for e in events if e["kind"] == "step_end")
    assert trace == to_chrome_trace(events)
    with running_server(loaded_fp32) as plain:
        plain_app = plain.server.config.app
        plain_app.state.scope.replay = path
        r = httpx.get(plain.url + "/scope/api/replay")
        assert r.status_code == 200
        assert [json.loads(line) for line in r.text.splitlines()] == events


# -- bounded lesson runs ------------------------------------------------------------------


def test_a_run_past_its_token_cap_is_stopped_and_frees_every_block(loaded_fp32):
    request = LabRunRequest(prompts=PROMPTS * 2, max_tokens=32, block_size=4, num_blocks=64)
    with pytest.raises(LabStopped) as stopped:
        run_lab(loaded_fp32, request, LabBudget(LabLimits(max_tokens=60)))
    assert stopped.value.reason == "token_cap"
    assert "at most 60" in str(stopped.value)
    assert stopped.value.num_blocks == 64
    assert stopped.value.num_free_blocks == 64


def test_a_run_past_its_time_is_stopped_and_frees_every_block(loaded_fp32):
    """The serving engine never idles here, so the run waits before its first step
    until its time is up."""
    request = LabRunRequest(prompts=PROMPTS, max_tokens=8, block_size=4, num_blocks=32)
    budget = LabBudget(LabLimits(timeout_s=0.3), serving_busy=lambda: True)
    started = time.monotonic()
    with pytest.raises(LabStopped) as stopped:
        run_lab(loaded_fp32, request, budget)
    assert 0.3 <= time.monotonic() - started < 5
    assert stopped.value.reason == "timeout"
    assert stopped.value.num_free_blocks == stopped.value.num_blocks == 32


def test_a_third_concurrent_lab_run_gets_429_and_runs_yield_to_serving(loaded_fp32):
    """One lesson runs, one waits (queue of 1), the third is refused at once. While a
    real request streams, the running lesson waits before each step; when it ends,
    both lessons finish."""
    limits = LabLimits(queue=1, max_tokens=300, timeout_s=120, retry_after_s=7)
    with running_server(loaded_fp32, lab_limits=limits) as srv:
        gate = srv.app.state.scope.lab_gate
        body = {"prompts": PROMPTS, "max_tokens": 4, "block_size": 4, "num_blocks": 32}
        serving = httpx.stream("POST", srv.url + "/v1/completions", timeout=60, json={
            "model": MODEL_NAME, "prompt": PROMPTS[0], "max_tokens": 400, "ignore_eos": True,
            "stream": True})
        response = serving.__enter__()
        lines = response.iter_lines()
        next(line for line in lines if line)  # the serving engine is busy now
        results: list[int] = []
        runs = [threading.Thread(target=lambda: results.append(lab(srv, **body).status_code))
                for _ in range(2)]
        for run in runs:
            run.start()
        for _ in range(400):
            if gate.admitted == 2:
                break
            time.sleep(0.01)
        assert gate.admitted == 2
        refused = lab(srv, **body)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "7"
        assert refused.json()["error"]["code"] == "lab_busy"
        assert results == []  # both wait for the stream to end
        serving.__exit__(None, None, None)
        for run in runs:
            run.join(120)
        assert results == [200, 200]
        too_big = lab(srv, prompts=PROMPTS * 4, max_tokens=64, block_size=4, num_blocks=128)
        assert too_big.status_code == 400
        assert too_big.json()["error"]["code"] == "lab_token_cap"
        assert gate.admitted == 0
