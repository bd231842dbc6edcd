"""The data-parallelism lesson's run (scope/routing_lab.py) over HTTP: a shared-prefix
workload routed by the router's own round_robin and cache_aware policies over replica
engines, each with its own prefix cache. Where each request goes, and how many of its
prompt tokens its replica's cache held, are worked out here from the policies' rules and
the tokenizer, independently of the run."""

from __future__ import annotations

import json

import httpx
import pytest

from kvscope.scope.lab_limits import LabBudget, LabLimits, LabStopped
from kvscope.scope.routing_lab import RoutingLabRequest, routing_lesson
from tests.server_harness import running_server

SYSTEMS = ["You are a ship's cook. Answer in one sentence about food at sea.",
           "You are a chess coach. Answer with one short tip about openings.",
           "You are a gardener. Answer briefly about plants that grow in shade."]
QUESTIONS = ["What is first?", "Why?", "And then?"]
BODY = {"systems": SYSTEMS, "questions": QUESTIONS, "replicas": 2, "max_tokens": 2,
        "block_size": 8}


@pytest.fixture(scope="module")
def server(loaded_fp32):
    with running_server(loaded_fp32) as running:
        yield running


def post(server, body):
    return httpx.post(server.url + "/scope/api/lab/routing", json=body, timeout=120)


@pytest.fixture(scope="module")
def run(server):
    r = post(server, BODY)
    assert r.status_code == 200, r.text
    return r.json()


def by_policy(run):
    return {p["policy"]: p for p in run["policies"]}


def expected_hits(tokenizer, policy) -> list[int]:
    """Each request's cached prompt tokens: the full blocks its prompt shares with an
    earlier prompt on the same replica (the last prompt token is always computed)."""
    req = RoutingLabRequest(**BODY)
    ids = [tokenizer.encode(req.prompt(r["system"], r["question"]), add_special_tokens=True)
           for r in policy["requests"]]
    hits = []
    for i, r in enumerate(policy["requests"]):
        best = 0
        for j in range(i):
            if policy["requests"][j]["replica"] != r["replica"]:
                continue
            common = 0
            while (common < min(len(ids[i]), len(ids[j]))
                   and ids[i][common] == ids[j][common]):
                common += 1
            best = max(best, min(common, len(ids[i]) - 1) // 8 * 8)
        hits.append(best)
    return hits


def test_the_workload_arrives_question_major(run):
    for policy in run["policies"]:
        assert [(r["system"], r["question"]) for r in policy["requests"]] == [
            (s, q) for q in range(3) for s in range(3)]
        assert [r["index"] for r in policy["requests"]] == list(range(9))
    assert run["workload"]["replicas"] == 2 and run["workload"]["block_size"] == 8


def test_round_robin_takes_the_replicas_in_turn(run):
    rr = by_policy(run)["round_robin"]
    assert [r["replica"] for r in rr["requests"]] == [0, 1, 0, 1, 0, 1, 0, 1, 0]
    assert {r["reason"] for r in rr["requests"]} == {"round_robin"}
    assert [r["requests"] for r in rr["replicas"]] == [5, 4]


def test_cache_aware_keeps_each_system_prompt_on_one_replica(run):
    ca = by_policy(run)["cache_aware"]
    requests = ca["requests"]
    # s0 and s2 share nothing with a prompt seen: the least loaded (replica 0 by its
    # count of requests when the loads tie); s1 finds replica 0 busier
    assert [r["replica"] for r in requests] == [0, 1, 0] * 3
    assert [r["reason"] for r in requests] == ["no_match"] * 3 + ["prefix"] * 6
    for r in requests[3:]:
        # the system prompt and "\n\nQuestion: " at least: over half the prompt
        assert r["matched_chars"] >= len(SYSTEMS[r["system"]]) + len("\n\nQuestion: ")
        assert 2 * r["matched_chars"] >= r["prompt_chars"]
    assert [r["loads"] for r in requests[:3]] == [[0, 0], [1, 0], [0, 1]]


def test_hits_follow_the_tokens_each_replica_already_holds(run, loaded_fp32):
    policies = by_policy(run)
    for name, policy in policies.items():
        hits = [r["hit_tokens"] for r in policy["requests"]]
        assert hits == expected_hits(loaded_fp32.tokenizer, policy), name
        # per replica, the requests' hits and prompt tokens add up to the engine's counters
        for replica in policy["replicas"]:
            mine = [r for r in policy["requests"] if r["replica"] == replica["replica"]]
            assert sum(r["hit_tokens"] for r in mine) == replica["prefix_cache_hits"]
            assert sum(r["prompt_tokens"] for r in mine) == replica["prefix_cache_queries"]
            assert replica["hit_rate"] == pytest.approx(
                replica["prefix_cache_hits"] / replica["prefix_cache_queries"])
            assert replica["url"] == f"replica {replica['replica']}"
            assert replica["all_blocks_free"]
            assert replica["num_free_blocks"] == replica["num_blocks"] == run["workload"][
                "num_blocks"]
        totals = policy["totals"]
        assert totals["prefix_cache_hits"] == sum(hits)
        assert totals["all_blocks_free"]
        prompt_tokens = sum(r["prompt_tokens"] for r in policy["requests"])
        assert prompt_tokens == sum(run["workload"]["prompt_tokens"])
        # every prompt token not found in a cache is computed, plus one per later token
        assert totals["num_computed_tokens"] == prompt_tokens - sum(hits) + 9 * (2 - 1)
    rr, ca = policies["round_robin"], policies["cache_aware"]
    assert [i for i, r in enumerate(rr["requests"]) if r["hit_tokens"]] == [6, 7, 8]
    assert [i for i, r in enumerate(ca["requests"]) if r["hit_tokens"]] == [3, 4, 5, 6, 7, 8]
    assert ca["totals"]["prefix_cache_hits"] > rr["totals"]["prefix_cache_hits"]
    assert ca["totals"]["num_computed_tokens"] < rr["totals"]["num_computed_tokens"]


@pytest.mark.parametrize("change, param_text", [
    ({"systems": SYSTEMS[:1]}, "systems"),
    ({"replicas": 5}, "replicas"),
    ({"nonsense": 1}, "nonsense"),
    ({"questions": ["ok", " "]}, "questions must not be empty"),
    ({"systems": ["word " * 300, "x"]}, "at most 256"),
])
def test_bad_input_gets_400(server, change, param_text):
    r = post(server, {**BODY, **change})
    assert r.status_code == 400
    assert param_text in json.dumps(r.json()["error"])


def test_a_run_past_its_token_cap_stops(loaded_fp32):
    with pytest.raises(LabStopped) as stopped:
        routing_lesson(loaded_fp32, RoutingLabRequest(**BODY), LabBudget(LabLimits(max_tokens=60)))
    assert stopped.value.reason == "token_cap"
    assert stopped.value.num_free_blocks == stopped.value.num_blocks
