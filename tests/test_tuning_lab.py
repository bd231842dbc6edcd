"""The Tuning Lab's measurements (bench/tuning.py, bench/sweep.py, the scope's
/lab/tuning routes) on the bundled model (fp32): `kvscope bench sweep` on a tiny grid
writes the file the lab ships, the lab's live route measures through the very function
the sweep calls, and every knob out of bounds is a 400."""

from __future__ import annotations

import json
import math
import shlex

import httpx
import pytest

from kvscope.bench import sweep as sweep_module
from kvscope.bench import tuning
from kvscope.bench.sweep import RECORDED_SWEEP, SWEEP_KIND
from kvscope.bench.tuning import SETTING_KEYS, TuningRun, build_engine, drive, workload_prompts
from kvscope.cli import build_parser, main
from kvscope.scope.lab_limits import LabBudget, LabLimits, LabStopped
from tests.server_harness import running_server

TINY = {"num_requests": 2, "input_len": 16, "output_len": 3, "shared_prefix_len": 8, "seed": 3}
TINY_FLAGS = ["--num-requests", "2", "--input-len", "16", "--output-len", "3",
              "--shared-prefix-len", "8", "--seed", "3"]


@pytest.fixture
def spy(monkeypatch):
    """Every call of tuning.measure_setting: (the run it measured, what it returned)."""
    calls: list[tuple[TuningRun, dict]] = []
    real = tuning.measure_setting

    def measured(loaded, run, budget=None):
        point = real(loaded, run, budget)
        calls.append((run, point))
        return point

    monkeypatch.setattr(tuning, "measure_setting", measured)
    return calls


@pytest.fixture(scope="module")
def server(loaded_fp32):
    with running_server(loaded_fp32) as running:
        yield running


def test_bench_sweep_writes_every_point_of_a_tiny_grid(tmp_path, monkeypatch, spy, loaded_fp32):
    import kvscope.model.loader

    # the CLI loads the model itself; hand it the session's copy (same weights, no reload)
    monkeypatch.setattr(kvscope.model.loader, "load_model", lambda *a, **k: loaded_fp32)
    out = tmp_path / "sweep.json"
    argv = ["bench", "sweep", "--dtype", "float32", "--max-num-seqs", "1", "2",
            "--max-num-batched-tokens", "64", "--num-blocks", "8", "--prefix-caching", "on",
            "--speculative", "off", "--request-rate", "inf", *TINY_FLAGS, "--output", str(out),
            "--quiet"]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert (doc["kind"], doc["version"]) == (SWEEP_KIND, 1)
    assert doc["grid"] == {"max_num_seqs": [1, 2], "max_num_batched_tokens": [64],
                           "num_blocks": [8], "enable_prefix_caching": [True],
                           "speculative": ["off"], "request_rate": [None]}
    assert doc["workload"] == TINY
    assert len(doc["points"]) == 2 == len(spy)
    assert [p["setting"]["max_num_seqs"] for p in doc["points"]] == [1, 2]
    for point, (run, measured) in zip(doc["points"], spy, strict=True):
        assert point["setting"] == run.setting() == measured["setting"]
        assert set(point["setting"]) == set(SETTING_KEYS)
        m = point["metrics"]
        assert m["requests"] == m["completed"] == 2 and m["failed"] == 0
        assert m["output_tokens"] == 2 * 3 and m["prompt_tokens"] == 2 * 16
        for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            assert 0 < m[name]["mean"] <= m[name]["p99"], name
        assert m["output_throughput"] > 0 and m["request_throughput"] > 0
        assert m["duration_s"] > 0
        assert point["engine"]["steps"] > 0 and point["engine"]["preemptions"] == 0
        assert point["engine"]["draft_acceptance_rate"] is None
    # one seat: the two requests run one after the other, so the second waits for the first
    one_seat = doc["points"][0]["metrics"]
    assert one_seat["ttft_ms"]["p99"] > one_seat["e2e_ms"]["mean"] / 2
    machine = doc["machine"]
    assert machine["dtype"] == "float32" and machine["model"] == loaded_fp32.path.name
    assert machine["torch_threads"] >= 1 and machine["kernel_isa"] and machine["cpu"]
    # the command it records measures the same grid again
    words = shlex.split(doc["command"])
    assert words[:3] == ["kvscope", "bench", "sweep"]
    again = build_parser().parse_args(words[1:])
    assert {k: getattr(again, k) for k in SETTING_KEYS} == doc["grid"]
    assert {k: getattr(again, k) for k in TINY} == TINY and again.output == str(out)


def test_a_grid_point_the_lab_would_refuse_fails_before_anything_runs(loaded_fp32):
    with pytest.raises(ValueError, match=r"(?s)grid point .*num_blocks 4 holds 64 tokens"):
        sweep_module.grid_points({**sweep_module.DEFAULT_GRID, "num_blocks": [4]},
                                 {**TINY, "input_len": 60, "output_len": 10})


def test_the_lab_route_measures_through_the_function_the_sweep_calls(server, spy):
    body = {"max_num_seqs": 2, "max_num_batched_tokens": 64, "num_blocks": 8,
            "enable_prefix_caching": False, "speculative": "ngram", "request_rate": 50.0, **TINY}
    r = httpx.post(server.url + "/scope/api/lab/tuning", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert len(spy) == 1
    run, point = spy[0]
    assert run == TuningRun(**body)
    assert r.json() == json.loads(json.dumps(point))  # the response is that call's return value
    data = r.json()
    assert data["setting"] == {k: body[k] for k in SETTING_KEYS}
    assert data["workload"] == TINY
    assert data["metrics"]["completed"] == 2 and data["metrics"]["output_tokens"] == 6
    assert data["budget_wait_s"] >= 0 and data["machine"]["dtype"] == "float32"
    # a live point has every field a recorded point has, plus the machine and workload
    recorded = json.loads(RECORDED_SWEEP.read_text())["points"][0]
    assert set(data) == (set(recorded) - {"repeats"}) | {"machine", "workload"}
    assert set(data["metrics"]) == set(recorded["metrics"])


def test_the_recorded_sweep_ships_and_is_served(server):
    r = httpx.get(server.url + "/scope/api/lab/tuning/sweep", timeout=30)
    assert r.status_code == 200
    doc = r.json()
    assert doc == json.loads(RECORDED_SWEEP.read_text())
    assert doc["kind"] == SWEEP_KIND and doc["command"].startswith("kvscope bench sweep ")
    grid = doc["grid"]
    assert len(doc["points"]) == math.prod(len(v) for v in grid.values())
    for point in doc["points"]:
        TuningRun(**point["setting"], **doc["workload"])  # within the lab's bounds
        m = point["metrics"]
        assert m["completed"] == m["requests"] == doc["workload"]["num_requests"]
        assert m["output_throughput"] > 0 and m["ttft_ms"]["mean"] > 0


@pytest.mark.parametrize("change, param_text", [
    ({"max_num_seqs": 0}, "max_num_seqs"),
    ({"max_num_seqs": 33}, "max_num_seqs"),
    ({"max_num_batched_tokens": 8}, "max_num_batched_tokens"),
    ({"num_blocks": 513}, "num_blocks"),
    ({"num_blocks": 1}, "num_blocks"),
    ({"speculative": "eagle"}, "speculative"),
    ({"request_rate": 0}, "request_rate"),
    ({"request_rate": 1000}, "request_rate"),
    ({"num_requests": 17}, "num_requests"),
    ({"input_len": 257}, "input_len"),
    ({"output_len": 65}, "output_len"),
    ({"shared_prefix_len": 20}, "shared_prefix_len (20) must be at most input_len (16)"),
    ({"num_blocks": 4, "input_len": 60, "output_len": 10, "shared_prefix_len": 0},
     "num_blocks 4 holds 64 tokens, but one request needs 70"),
    ({"enable_prefix_caching": "yes please"}, "enable_prefix_caching"),
    ({"threads": 64}, "threads"),
])
def test_out_of_bounds_knobs_get_400(server, change, param_text):
    r = httpx.post(server.url + "/scope/api/lab/tuning", json={**TINY, **change}, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] and error["message"]
    assert param_text in json.dumps(error)


def test_a_live_run_past_its_token_cap_stops_and_frees_its_blocks(loaded_fp32):
    with pytest.raises(LabStopped) as stopped:
        tuning.measure_setting(loaded_fp32, TuningRun(**TINY), LabBudget(LabLimits(max_tokens=40)))
    assert stopped.value.reason == "token_cap"
    assert stopped.value.num_free_blocks == stopped.value.num_blocks


def test_every_token_is_one_chunk_and_the_clock_starts_at_arrival(loaded_fp32):
    run = TuningRun(max_num_seqs=1, request_rate=20.0, num_blocks=8, **TINY)
    engine = build_engine(loaded_fp32, run)
    try:
        records, duration, waited = drive(engine, run, workload_prompts(loaded_fp32, run), None)
    finally:
        engine.shutdown()
    assert waited == 0.0
    assert [r.success for r in records] == [True, True]
    assert records[0].send_s == 0.0 < records[1].send_s  # seeded Poisson arrivals
    for r in records:
        assert r.output_tokens == 3 and len(r.itl_s) == 2  # no speculation: a token per step
        assert 0 < r.ttft_s <= r.e2e_s
        assert r.send_s + r.e2e_s <= duration + 1e-9
    prompts = workload_prompts(loaded_fp32, run)
    assert [len(p) for p in prompts] == [16, 16] and prompts[0][:8] == prompts[1][:8]
