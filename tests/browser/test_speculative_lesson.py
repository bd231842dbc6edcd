"""The speculative decoding lesson: the page runs the real engine with drafts (n-gram
lookup, or the early-exit self-draft), then once more without them. What it prints for
each step (what was drafted, accepted, added by the target, the draft slots and the
blocks trimmed, the run's totals) must equal what the run's events say, computed here
in Python independently of the page."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.browser.scope_fold import fold, ids, is_lab_run, js_fixed, js_pct, screenshot, stops

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

PAGE = "/lessons/speculative-decoding.html"
RID = "0"


def slider(page):
    return page.locator(".player input[type=range].position")


def goto_lab(page, path: str) -> tuple[dict, dict]:
    """Open the lesson; the lab run it starts on load and what it asked for (the first
    forward pass of a test process is slow, hence the long wait)."""
    with page.expect_response(is_lab_run, timeout=180_000) as info:
        page.goto(path)
    response = info.value
    assert response.ok, response.text()
    return response.json(), response.request.post_data_json


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class Run:
    """A lab run's events, read step by step."""

    def __init__(self, run: dict[str, Any], body: dict[str, Any]) -> None:
        self.run = run
        self.body = body
        self.events = run["events"]
        self.texts = {int(t): text for t, text in run["token_texts"].items()}
        self.bs = self.events[0]["block_size"]

    def q(self, token: int) -> str:
        return json.dumps(self.texts[token], ensure_ascii=False)

    def verifications(self, upto: int | None = None) -> list[tuple[int, dict]]:
        return [(i, e) for i, e in enumerate(self.events[:upto])
                if e["kind"] == "drafts_verified" and e["request_id"] == RID]

    def step_of(self, pos: int) -> int:
        return self.events[pos - 1]["step"] if pos else 0

    def stop_of_step(self, step: int) -> int:
        return next(s for s in stops(self.events) if self.events[s - 1]["step"] == step)

    def this_step(self, pos: int) -> list[tuple[int, dict]]:
        step = self.step_of(pos)
        return [(i, e) for i, e in enumerate(self.events[:pos]) if e["step"] == step]

    def readout(self, pos: int) -> str:
        events = self.events
        if pos == 0:
            return f"event 0 of {len(events)}: before the engine started"
        step = self.step_of(pos)
        spec = self.body["speculative_config"]
        k = spec["num_speculative_tokens"]
        if spec["method"] == "ngram":
            method = (f"method: n-gram lookup, k = {k}, longest n-gram "
                      f"{spec['prompt_lookup_max']}")
        else:
            layers = events[0]["num_layers"]
            method = (f"method: early-exit self-draft, k = {k}, drafts from the first "
                      f"{spec['draft_layers']} of {layers} layers")
        lines = [f"step {step}, event {pos} of {len(events)}", method]
        f = fold(events, pos)
        if RID not in f.reqs:
            lines.append(f"request {RID} has not arrived yet")
            lines.append(self.compare_line())
            return "\n".join(lines)
        now = self.this_step(pos)
        verify = next(((i, e) for i, e in now if e["kind"] == "drafts_verified"), None)
        end = next((e for _, e in now if e["kind"] == "step_end"), None)
        # what the step did
        if verify:
            v = verify[1]
            drafts, accepted = v["draft_token_ids"], v["num_accepted"]
            kind = "bonus" if accepted == len(drafts) else "correction"
            lines.append(f"step {step}: drafted {len(drafts)} "
                         f"({', '.join(self.q(t) for t in drafts)}), accepted {accepted}, "
                         f"target added 1 ({kind} {self.q(v['token_ids'][-1])})")
        elif end is None:
            lines.append(f"step {step}: nothing verified yet")
        else:
            chunk = next(c for c in end["batch"] if c["request_id"] == RID)
            lines.append(f"step {step}: prefill of {chunk['num_tokens']} prompt tokens, no drafts"
                         if chunk["phase"] == "prefill"
                         else f"step {step}: no drafts, a plain decode of 1 token")
        # the run so far
        done = [e for _, e in self.verifications(pos)]
        if done:
            drafted = sum(len(e["draft_token_ids"]) for e in done)
            accepted = sum(e["num_accepted"] for e in done)
            per_pass = sum(len(e["token_ids"]) for e in done) / len(done)
            lines.append(f"run so far: {drafted} drafted, {accepted} accepted "
                         f"({js_pct(accepted / drafted)}), {js_fixed(per_pass, 2)} tokens per "
                         f"verifying pass ({len(done)} pass{'' if len(done) == 1 else 'es'})")
        else:
            lines.append("run so far: no verifying pass yet")
        # the draft slots: the positions after the known token, in the table of that moment
        if verify:
            i, v = verify
            emitted_before = sum(e["kind"] == "token_emitted" for e in events[:i])
            start = f.reqs[RID].prompt_len + emitted_before - 1
            table = fold(events, i).tables[RID]
            positions = [start + 1 + j for j in range(len(v["draft_token_ids"]))]
            blocks = list(dict.fromkeys(table[p // self.bs] for p in positions))
            where = (f"position {positions[0]}" if len(positions) == 1
                     else f"positions {positions[0]}–{positions[-1]}")
            lines.append(f"draft KV slots this step: {len(positions)} ({where}) in "
                         f"{'block' if len(blocks) == 1 else 'blocks'} {ids(blocks)}")
        else:
            lines.append("draft KV slots this step: none")
        # blocks trimmed: before the pass (empty slots) or after it (rejected drafts)
        empty: list[int] = []
        rejected: list[int] = []
        for i, e in now:
            if e["kind"] == "blocks_trimmed" and e["request_id"] == RID:
                (rejected if verify and verify[0] < i else empty).extend(e["block_ids"])
        if empty or rejected:
            parts = []
            if empty:
                parts.append(f"{ids(empty)}: slots the draft passes borrowed")
            if rejected:
                parts.append(f"{ids(rejected)}: only rejected drafts")
            lines.append(f"blocks trimmed this step: {len(empty) + len(rejected)} "
                         f"({'; '.join(parts)})")
        else:
            lines.append("blocks trimmed this step: none")
        emitted = sum(e["kind"] == "token_emitted" for _, e in now)
        lines.append(f"tokens emitted this step: {emitted}; output so far: "
                     f"{plural(f.reqs[RID].outputs, 'token')}")
        finished = next((e for _, e in now if e["kind"] == "request_finished"), None)
        if finished:
            lines.append(f"request {RID} finished ({finished['reason']}) after "
                         f"{plural(finished['num_output_tokens'], 'token')}")
        lines.append(self.compare_line())
        return "\n".join(lines)

    def compare_line(self) -> str:
        spec = self.run["outputs"][0]["token_ids"]
        plain = self.run["plain"]["outputs"][0]["token_ids"]
        assert spec == plain, "greedy speculative decoding must give the target's own tokens"
        return (f"plain greedy run without speculation: identical token ids "
                f"({plural(len(spec), 'token')})")


def check_strip(page, r: Run, pos: int) -> None:
    """The drafts of the current step, coloured by verdict, and one row per position."""
    v = next(e for _, e in r.this_step(pos) if e["kind"] == "drafts_verified")
    drafts, accepted = v["draft_token_ids"], v["num_accepted"]
    expect(page.locator("#strip li")).to_have_count(len(drafts) + 2)
    expect(page.locator("#strip li.acc")).to_have_count(accepted)
    expect(page.locator("#strip li.rej")).to_have_count(len(drafts) - accepted)
    last = "bonus" if accepted == len(drafts) else "fix"
    expect(page.locator(f"#strip li.{last}")).to_have_attribute(
        "aria-label", f"the target's {'bonus' if last == 'bonus' else 'correction'} "
                      f"{r.q(v['token_ids'][-1])}")
    expect(page.locator("#rows tbody tr")).to_have_count(len(drafts) + 1)
    expect(page.locator("#slots .slot.acc")).to_have_count(accepted)
    expect(page.locator("#slots .slot.rej")).to_have_count(len(drafts) - accepted)


def test_speculative_lesson_steps_through_drafts_and_verdicts(page):
    data, body = goto_lab(page, PAGE)
    r = Run(data, body)
    events = r.events
    spec = body["speculative_config"]
    assert spec == {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
    assert body["temperature"] == 0 and body["compare_plain"] is True
    assert "Repeat the following text exactly" in body["prompts"][0]
    verified = [e for _, e in r.verifications()]
    assert verified, "the default prompt copies its input: n-gram lookup drafts"
    drafted = sum(len(e["draft_token_ids"]) for e in verified)
    accepted = sum(e["num_accepted"] for e in verified)
    assert accepted / drafted > 0.5, "copying a passage, most drafts are accepted"
    assert data["plain"]["identical"] == [True]
    for e in verified:  # kept drafts are a prefix, then the target's one token
        n = e["num_accepted"]
        assert e["token_ids"][:n] == e["draft_token_ids"][:n] and len(e["token_ids"]) == n + 1
    readout = page.locator("#readout")

    # it opens after the first verifying pass
    at = r.stop_of_step(verified[0]["step"])
    expect(readout).to_have_text(r.readout(at))
    check_strip(page, r, at)
    # the step's chunk agrees: known token + drafts, starting where the readout says
    chunk = next(c for c in events[at - 1]["batch"] if c["request_id"] == RID)
    assert chunk["phase"] == "verify"
    assert chunk["num_draft_tokens"] == len(verified[0]["draft_token_ids"])
    expect(readout).to_contain_text(f"positions {chunk['start'] + 1}–")

    # the next step, by button
    page.get_by_role("button", name="Next step", exact=True).click()
    at = next(s for s in stops(events) if s > at)
    expect(readout).to_have_text(r.readout(at))

    # a step whose rejected drafts gave a block back: outlined in the pool, dashed in the slots
    trims = [(i, e) for i, e in enumerate(events) if e["kind"] == "blocks_trimmed"
             and any(e["step"] == v["step"] and j < i for j, v in r.verifications())]
    assert trims, "a rejection crossing a block boundary trims a block"
    trim = trims[0][1]
    at = r.stop_of_step(trim["step"])
    slider(page).fill(str(at))
    expect(readout).to_have_text(r.readout(at))
    expect(readout).to_contain_text(f"blocks trimmed this step: {len(trim['block_ids'])} "
                                    f"({ids(trim['block_ids'])}: only rejected drafts)")
    check_strip(page, r, at)
    expect(page.locator("#pool .cell.hl")).to_have_count(len(trim["block_ids"]))
    for b in trim["block_ids"]:
        assert fold(events, at).refs[b] == 0
        expect(page.locator(f"#pool .cell.hl[data-block='{b}']")).to_have_count(1)
    expect(page.locator("#slots .spec-block.trimmed")).to_have_count(len(trim["block_ids"]))
    screenshot(page, "speculative-decoding")

    # in the middle of that step: verified, but no token emitted yet and nothing trimmed
    verify_at = next(j for j, v in r.verifications() if v["step"] == trim["step"])
    slider(page).fill(str(verify_at + 1))
    expect(readout).to_have_text(r.readout(verify_at + 1))
    expect(readout).to_contain_text("tokens emitted this step: 0;")
    assert "only rejected drafts" not in r.readout(verify_at + 1)

    # the end: the totals of the whole run, both outputs shown, the same tokens
    page.get_by_role("button", name="End", exact=True).click()
    expect(readout).to_have_text(r.readout(len(events)))
    expect(readout).to_contain_text(f"run so far: {drafted} drafted, {accepted} accepted")
    expect(page.locator("#outputs li .text").nth(0)).to_have_text(data["outputs"][0]["text"])
    expect(page.locator("#outputs li .text").nth(1)).to_have_text(
        data["plain"]["outputs"][0]["text"])
    n = len(data["outputs"][0]["token_ids"])
    expect(page.locator("#same")).to_have_text(
        "Identical token ids: the server ran the prompt again without speculation and all "
        f"{n} tokens came out the same.")
    expect(page.locator("#chart svg rect.acc")).to_have_count(len(verified))
    assert data["final"]["num_free_blocks"] == events[0]["num_blocks"]


def test_speculative_lesson_self_draft_from_the_keyboard(page):
    data, _ = goto_lab(page, PAGE)
    readout = page.locator("#readout")
    expect(readout).to_contain_text("method: n-gram lookup")
    # the early-exit proposer, k = 2, a short answer: all chosen with the keyboard
    page.locator("#method-ngram").focus()
    page.keyboard.press("ArrowDown")
    expect(page.locator("#method-self-draft")).to_be_checked()
    expect(page.locator("#layers-label")).to_be_visible()
    expect(page.locator("#lookup-label")).to_be_hidden()
    page.locator("#k").focus()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#k")).to_have_attribute("aria-valuetext", "2 drafts per step")
    page.locator("#max-tokens").fill("8")
    page.locator("#max-tokens").focus()
    with page.expect_response(is_lab_run, timeout=180_000) as info:
        page.keyboard.press("Enter")
    assert info.value.ok, info.value.text()
    body = info.value.request.post_data_json
    assert body["speculative_config"] == {"method": "self_draft", "num_speculative_tokens": 2,
                                          "draft_layers": 28}
    r = Run(info.value.json(), body)
    verified = r.verifications()
    assert verified and all(e["method"] == "self_draft" for _, e in verified)
    assert all(len(e["draft_token_ids"]) <= 2 for _, e in verified)
    at = r.stop_of_step(verified[0][1]["step"])
    expect(readout).to_have_text(r.readout(at))
    check_strip(page, r, at)
    # step on with the keyboard: the player's buttons and its slider
    page.locator("button[data-act=next-step]").focus()
    page.keyboard.press("Enter")
    at = next(s for s in stops(r.events) if s > at)
    expect(readout).to_have_text(r.readout(at))
    slider(page).focus()
    page.keyboard.press("ArrowLeft")
    expect(readout).to_have_text(r.readout(at - 1))
    page.keyboard.press("Home")
    expect(readout).to_have_text(r.readout(0))

    # a layer count the model does not have: the server's 400 in the page's alert
    page.locator("#draft-layers").fill(str(r.events[0]["num_layers"]))
    page.get_by_role("button", name="Run the engine").click()
    expect(page.locator("#error")).to_contain_text(
        "HTTP 400): speculative_config draft_layers must be below the model's")
    expect(page.locator("#status")).to_have_text("The picture below still shows the previous run.")
    assert data["events"]

