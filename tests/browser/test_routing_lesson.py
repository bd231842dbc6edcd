"""The data parallelism and routing lesson: the page sends a shared-prefix workload to
POST /scope/api/lab/routing, where the router's own round_robin and cache_aware policies
spread it over replica engines. What it prints (each request's replica, reason and
cached tokens, each replica's hits, the totals) must equal what the response says,
formatted here in Python independently of the page."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.scope_fold import js_pct, screenshot

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

PAGE = "/lessons/data-parallel.html"
RUN_MS = 60_000
SYSTEMS = ["You are a ship's cook. Answer in one sentence about food at sea.",
           "You are a chess coach. Answer with one short tip about openings.",
           "You are a gardener. Answer briefly about plants that grow in shade."]
QUESTIONS = ["What is first?", "Why?", "And then?"]


def is_routing_run(response: Any) -> bool:
    return (response.url.endswith("/scope/api/lab/routing")
            and response.request.method == "POST")


def n(x: int) -> str:
    return f"{x:,}"


def plural(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def tag(r: dict[str, Any]) -> str:
    return f"{'ABCDEF'[r['system']]}{r['question'] + 1}"


def reason(r: dict[str, Any]) -> str:
    if r["reason"] == "round_robin":
        return "next in turn"
    if r["reason"] == "prefix":
        return (f"prefix: {n(r['matched_chars'])} of its {n(r['prompt_chars'])} characters "
                "match a recent prompt there")
    assert r["reason"] == "no_match"
    if r["matched_chars"]:
        return (f"no match (at most {n(r['matched_chars'])} of {n(r['prompt_chars'])} "
                "characters shared): the least loaded")
    return "no match (no recent prompt starts the same way): the least loaded"


def request_line(r: dict[str, Any]) -> str:
    return (f"request {r['index']} ({tag(r)}) → replica {r['replica']}: {reason(r)}; "
            f"{n(r['hit_tokens'])} of {n(r['prompt_tokens'])} prompt tokens cached")


def expected_readout(data: dict[str, Any]) -> str:
    w = data["workload"]
    count = len(w["systems"]) * len(w["questions"])
    lines = [f"{plural(len(w['systems']), 'system prompt')} × "
             f"{plural(len(w['questions']), 'question')} = {plural(count, 'request')} over "
             f"{w['replicas']} replicas; blocks of {w['block_size']} tokens, {w['num_blocks']} "
             f"per replica; {plural(w['max_tokens'], 'token')} generated per request"]
    policies = {p["policy"]: p for p in data["policies"]}
    for name in ("round_robin", "cache_aware"):
        p = policies[name]
        t = p["totals"]
        assert t["hit_rate"] == t["prefix_cache_hits"] / t["prefix_cache_queries"]
        lines.append(f"{name}: {n(t['prefix_cache_hits'])} of {n(t['prefix_cache_queries'])} "
                     f"prompt tokens from the prefix caches ({js_pct(t['hit_rate'])}), "
                     f"{n(t['num_computed_tokens'])} tokens computed")
        for rep in p["replicas"]:
            lines.append(f"  replica {rep['replica']}: {plural(rep['requests'], 'request')}, "
                         f"{n(rep['prefix_cache_hits'])} of {n(rep['prefix_cache_queries'])} "
                         f"prompt tokens cached ({js_pct(rep['hit_rate'])})")
        lines += [f"  {request_line(r)}" for r in p["requests"]]
    rr, ca = policies["round_robin"]["totals"], policies["cache_aware"]["totals"]
    more = ca["prefix_cache_hits"] - rr["prefix_cache_hits"]
    fewer = rr["num_computed_tokens"] - ca["num_computed_tokens"]
    if more == 0:  # round_robin was lucky: each system prompt kept to one replica
        lines.append(f"cache_aware and round_robin found the same {n(ca['prefix_cache_hits'])} "
                     f"prompt tokens cached and computed {n(ca['num_computed_tokens'])} and "
                     f"{n(rr['num_computed_tokens'])} tokens")
    else:
        assert more > 0 and fewer > 0  # these workloads: cache_aware wins or ties
        lines.append(f"cache_aware found {n(more)} more prompt tokens cached than round_robin "
                     f"and computed {n(fewer)} fewer tokens")
    assert all(r["all_blocks_free"] for p in data["policies"] for r in p["replicas"])
    lines.append(f"every replica ends with all {w['num_blocks']} blocks free or cached")
    return "\n".join(lines)


def run_with(page, action) -> tuple[dict[str, Any], dict[str, Any]]:
    with page.expect_response(is_routing_run, timeout=RUN_MS) as info:
        action()
    response = info.value
    assert response.ok, response.text()
    return response.json(), response.request.post_data_json


def test_routing_lesson_shows_where_each_request_went(page):
    page.goto(PAGE)
    readout = page.get_by_label("Routing run readout")
    expect(readout).to_have_text("No run yet.")  # the run waits for the button
    expect(page.locator("#legend li")).to_have_count(4)  # the form's four system prompts
    page.get_by_label("System prompts, one per line").fill("\n".join(SYSTEMS))
    page.get_by_label("Questions, one per line").fill("\n".join(QUESTIONS))
    page.get_by_label("Replicas").fill("2")
    page.get_by_label("Tokens to generate").fill("2")
    button = page.get_by_role("button", name="Route and run")
    data, body = run_with(page, button.click)
    assert body == {"systems": SYSTEMS, "questions": QUESTIONS, "replicas": 2, "max_tokens": 2,
                    "block_size": 16}
    expect(readout).to_have_text(expected_readout(data))
    expect(page.locator("#status")).to_contain_text("Done in")
    policies = {p["policy"]: p for p in data["policies"]}
    assert [r["replica"] for r in policies["round_robin"]["requests"]] == [0, 1] * 4 + [0]

    # lanes: one per replica, each request's chip in its replica's lane, labelled
    for name, p in policies.items():
        panel = page.locator(f"#policy-{name}")
        expect(panel.locator(".dp-lane")).to_have_count(2)
        for rep in p["replicas"]:
            lane = panel.locator(".dp-lane").nth(rep["replica"])
            mine = [r for r in p["requests"] if r["replica"] == rep["replica"]]
            expect(lane.locator("button.dp-req")).to_have_count(len(mine))
            expect(lane.locator(".dp-sum")).to_contain_text(
                f"replica {rep['replica']}: {plural(rep['requests'], 'request')}")
        expect(panel.locator("button.dp-req.hit")).to_have_count(
            sum(1 for r in p["requests"] if r["hit_tokens"]))
    legend = page.locator("#legend li")
    expect(legend).to_have_count(3)
    expect(legend.first).to_have_text("A: You are a ship's cook. Answer…")
    expect(page.locator("#requests tbody tr")).to_have_count(9)

    # hover a request: its replica, reason and cached tokens
    rr = policies["round_robin"]["requests"]
    panel = page.locator("#policy-round_robin")
    panel.locator("button.dp-req[data-index='6']").hover()
    loads = ", ".join(str(x) for x in rr[6]["loads"])
    expect(panel.locator(".dp-detail")).to_have_text(
        f"{request_line(rr[6])} (in flight then: {loads}).")

    # the keyboard: one tab stop per policy, arrows move in arrival order
    ca = policies["cache_aware"]["requests"]
    panel = page.locator("#policy-cache_aware")
    panel.locator("button.dp-req[data-index='0']").focus()
    page.keyboard.press("ArrowRight")
    focused = panel.locator("button.dp-req[data-index='1']")
    expect(focused).to_be_focused()
    expect(focused).to_have_attribute("tabindex", "0")
    expect(panel.locator("button.dp-req[tabindex='0']")).to_have_count(1)
    loads = ", ".join(str(x) for x in ca[1]["loads"])
    expect(panel.locator(".dp-detail")).to_have_text(
        f"{request_line(ca[1])} (in flight then: {loads}).")
    page.keyboard.press("End")
    expect(panel.locator("button.dp-req[data-index='8']")).to_be_focused()
    screenshot(page, "data-parallel")

    # three replicas, run again from the keyboard (Enter in the form)
    replicas = page.get_by_label("Replicas")
    replicas.fill("3")
    data, body = run_with(page, lambda: replicas.press("Enter"))
    assert body["replicas"] == 3 and data["workload"]["replicas"] == 3
    expect(readout).to_have_text(expected_readout(data))
    expect(page.locator("#policy-cache_aware .dp-lane")).to_have_count(3)
    rr, ca = (p["requests"] for p in data["policies"])
    # three system prompts in turn over three replicas: round_robin keeps each system
    # prompt on one replica too, and ties with cache_aware
    assert [r["replica"] for r in rr] == [r["replica"] for r in ca] == [0, 1, 2] * 3
    expect(page.locator("#comparison")).to_contain_text(
        "cache_aware and round_robin found the same")

    # narrow: no horizontal scroll
    page.set_viewport_size({"width": 375, "height": 900})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "data-parallel-375px")


def test_a_form_with_one_system_prompt_is_refused_in_the_page(page):
    page.goto(PAGE)
    page.get_by_label("System prompts, one per line").fill("Only one system prompt")
    page.get_by_role("button", name="Route and run").click()
    expect(page.get_by_role("alert")).to_have_text(
        "Preparing the run failed: give 2 to 6 system prompts, one per line (got 1)")
    expect(page.get_by_label("Routing run readout")).to_have_text("No run yet.")
