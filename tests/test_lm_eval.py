"""lm-evaluation-harness, run end to end as a user runs it (`lm_eval run --model
local-completions`, remote tokenizer auto-detected, an API key) against a real kvscope
server: the loglikelihoods it reports equal Hugging Face transformers' on the very token
ids it sent, its is_greedy flags and acc follow from them, and its greedy generations
equal the offline engine's.

One lm_eval run serves every test (its start-up is slow); the tasks and their data are
in tests/data/lm_eval. A spy on the server's engine records the token ids each HTTP
request carried, since lm-eval's logged samples hold only text.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from hf_twin import hf_twin
from server_harness import MODEL_NAME, RunningServer, running_server

from kvscope import SamplingParams
from kvscope.model.loader import LoadedModel

pytest.importorskip("lm_eval", reason="lm-evaluation-harness (lm-eval[api]) is not installed")

KEY = "lm-eval-test-key"
TASKS_DIR = Path(__file__).parent / "data" / "lm_eval"
MC_TASK, GEN_TASK = "kvscope_mc", "kvscope_gen"
MAX_MODEL_LEN = 512
MAX_GEN_TOKS = 12  # kvscope_gen.yaml's max_gen_toks
UNTIL = ["\n"]  # kvscope_gen.yaml's until
SEED = 1234  # lm-eval's default `seed` model arg, sent with every request
TOLERANCE = 1e-3  # nats: reported loglikelihood vs transformers' fp32 one

Encode = Callable[[str], list[int]]
Pair = tuple[str, str]  # (context, continuation) of one loglikelihood request


@dataclass(slots=True)
class EngineCall:
    """One request as the engine received it."""

    prompt: list[int]
    params: SamplingParams

    @property
    def scores_prompt(self) -> bool:
        """A loglikelihood request: echo with logprobs asks for the prompt's logprobs."""
        return self.params.prompt_logprobs is not None


@dataclass(slots=True)
class Evaluation:
    """What one lm_eval run left: its results JSON, its logged samples per task (by
    doc_id), the engine requests it caused, and its log."""

    results: dict[str, Any]
    samples: dict[str, list[dict[str, Any]]]
    calls: list[EngineCall]
    log: str

    def mc_pairs(self) -> list[list[Pair]]:
        """Per multiple-choice doc, the (context, continuation) of each choice."""
        return [[(a["arg_0"], a["arg_1"]) for a in s["arguments"].values()]
                for s in self.samples[MC_TASK]]


@pytest.fixture(scope="module")
def server(loaded_fp32: LoadedModel) -> Iterator[RunningServer]:
    with running_server(loaded_fp32, api_key=KEY, max_model_len=MAX_MODEL_LEN) as running:
        yield running


@pytest.fixture(scope="module")
def engine_calls(server: RunningServer) -> Iterator[list[EngineCall]]:
    """Every request the server hands its engine from now on, recorded as it arrives
    (on the engine thread; list.append is atomic)."""
    calls: list[EngineCall] = []
    engine = server.engine.engine
    add_request = engine.add_request

    def recording(request_id: str | None, prompt: Any, params: SamplingParams,
                  **options: Any) -> str:
        assert not isinstance(prompt, str), "the server passes prompts on as token ids"
        calls.append(EngineCall(list(prompt), params))
        return add_request(request_id, prompt, params, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "add_request", recording)
        yield calls


@pytest.fixture(scope="module")
def evaluation(server: RunningServer, engine_calls: list[EngineCall],
               tmp_path_factory: pytest.TempPathFactory) -> Evaluation:
    """Run the lm_eval command line once, on both tasks, against the server."""
    work = tmp_path_factory.mktemp("lm_eval")
    output = work / "output"
    done = subprocess.run(lm_eval_command(server.url, output), env=lm_eval_env(work),
                          cwd=work, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"lm_eval failed:\n{done.stdout}\n{done.stderr[-6000:]}"
    results, samples = read_outputs(output)
    return Evaluation(results, samples, list(engine_calls), done.stderr)


def lm_eval_command(server_url: str, output: Path) -> list[str]:
    """The command a user types. auth_token is the key the remote tokenizer (/tokenizer_info,
    /tokenize, /detokenize) sends; completions send $OPENAI_API_KEY. num_concurrent=2 sends
    requests concurrently (lm-eval's async path), so the server batches them."""
    model_args = {"base_url": f"{server_url}/v1/completions", "model": MODEL_NAME,
                  "tokenizer_backend": "auto", "auth_token": KEY, "num_concurrent": 2,
                  "max_retries": 1, "timeout": 60, "max_length": MAX_MODEL_LEN}
    return [sys.executable, "-m", "lm_eval", "run", "--model", "local-completions",
            "--model_args", ",".join(f"{k}={v}" for k, v in model_args.items()),
            "--include_path", str(TASKS_DIR), "--tasks", f"{MC_TASK},{GEN_TASK}",
            "--output_path", str(output), "--log_samples"]


def lm_eval_env(work: Path) -> dict[str, str]:
    """The key for completions, nothing fetched from the network, any datasets cache in
    the test's own folder, and one thread for the client (the server needs the cores)."""
    return {**os.environ, "OPENAI_API_KEY": KEY, "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_CACHE": str(work / "datasets"),
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def read_outputs(output: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The one results JSON and each task's one samples file (sorted by doc_id), from
    the folder lm-eval names after the model."""
    results = sorted(output.rglob("results_*.json"))
    assert len(results) == 1, results
    samples = {}
    for task in (MC_TASK, GEN_TASK):
        files = sorted(output.rglob(f"samples_{task}_*.jsonl"))
        assert len(files) == 1, files
        rows = [json.loads(line) for line in files[0].read_text().splitlines() if line]
        samples[task] = sorted(rows, key=lambda row: row["doc_id"])
    return json.loads(results[0].read_text()), samples


@pytest.fixture(scope="module")
def encode(loaded_fp32: LoadedModel) -> Encode:
    """The model's tokenizer as lm-eval's remote backend calls it (/tokenize with
    add_special_tokens=false); test_remote_tokenizer_equals_local checks they agree."""
    tokenizer = loaded_fp32.tokenizer
    return lambda text: list(tokenizer.encode(text, add_special_tokens=False))


def encode_pair(encode: Encode, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's TemplateLM._encode_pair for a causal model: the context's trailing
    spaces move to the continuation, then context + continuation is encoded whole and
    split after the context's own ids (so the continuation's ids are the joined text's)."""
    assert context, "lm-eval scores an empty context differently (after a prefix token)"
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(context + continuation)
    context_ids = encode(context)
    return context_ids, whole[len(context_ids):]


@torch.inference_mode()
def hf_loglikelihood(model: Any, context: list[int],
                     continuation: list[int]) -> tuple[float, bool]:
    """transformers' fp32 log P(continuation | context), and whether every continuation
    token is the argmax at its position (lm-eval's is_greedy)."""
    logits = model(torch.tensor([context + continuation])).logits[0]
    positions = torch.arange(len(context) - 1, len(context) + len(continuation) - 1)
    targets = torch.tensor(continuation, dtype=torch.long)
    logprobs = torch.log_softmax(logits[positions].double(), dim=-1)
    total = logprobs[torch.arange(len(continuation)), targets].sum().item()
    return total, bool((logprobs.argmax(dim=-1) == targets).all())


@pytest.fixture(scope="module")
def hf_scores(evaluation: Evaluation, loaded_fp32: LoadedModel,
              encode: Encode) -> dict[Pair, tuple[float, bool]]:
    """transformers' (loglikelihood, is_greedy) of every multiple-choice request, on the
    token ids lm-eval's encoding gives."""
    model = hf_twin(loaded_fp32)
    pairs = {pair for doc in evaluation.mc_pairs() for pair in doc}
    return {pair: hf_loglikelihood(model, *encode_pair(encode, *pair)) for pair in pairs}


def reported(sample: dict[str, Any]) -> list[tuple[float, bool]]:
    """lm-eval's (loglikelihood, is_greedy) per choice; the samples file writes both as
    strings (repr of the float, so exact)."""
    return [(float(ll), greedy == "True") for ll, greedy in sample["filtered_resps"]]


def test_lm_eval_used_the_remote_tokenizer_and_the_key(evaluation: Evaluation,
                                                       server: RunningServer) -> None:
    assert "Using tokenizer remote" in evaluation.log  # auto-detected, with the key
    assert evaluation.results["n-samples"] == {MC_TASK: {"original": 6, "effective": 6},
                                               GEN_TASK: {"original": 3, "effective": 3}}
    # without the key the server refuses both kinds of call lm-eval made
    assert httpx.post(server.url + "/tokenize", json={"prompt": "x"}).status_code == 401
    assert httpx.post(server.url + "/v1/completions",
                      json={"model": MODEL_NAME, "prompt": "x"}).status_code == 401


def test_requests_are_the_task_prompts(evaluation: Evaluation) -> None:
    """The YAMLs were read as meant: each choice follows the question's "Answer: " (whose
    trailing space lm-eval's encoding moves to the continuation)."""
    for sample, pairs in zip(evaluation.samples[MC_TASK], evaluation.mc_pairs(), strict=True):
        context = f"Question: {sample['doc']['question']}\nAnswer: "
        assert pairs == [(context, choice) for choice in sample["doc"]["choices"]]
    for sample in evaluation.samples[GEN_TASK]:
        assert sample["arguments"]["gen_args_0"]["arg_0"] == sample["doc"]["prompt"]


def test_remote_tokenizer_equals_local(evaluation: Evaluation, server: RunningServer,
                                       encode: Encode) -> None:
    """/tokenize (what lm-eval encoded with) gives the loaded tokenizer's ids."""
    texts = {text for doc in evaluation.mc_pairs() for ctx, cont in doc
             for text in (ctx, ctx + cont)}
    texts |= {sample["doc"]["prompt"] for sample in evaluation.samples[GEN_TASK]}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.url, headers=headers) as client:
        for text in sorted(texts):
            response = client.post("/tokenize", json={"prompt": text,
                                                      "add_special_tokens": False})
            assert response.status_code == 200, response.text
            assert response.json()["tokens"] == encode(text), text


def test_scored_token_ids_are_lm_evals_encoding(evaluation: Evaluation,
                                                encode: Encode) -> None:
    """Each loglikelihood request reached the engine as context + continuation ids,
    scored with one top logprob and one greedy token (which lm-eval drops)."""
    expected = sorted(context + continuation for doc in evaluation.mc_pairs() for pair in doc
                      for context, continuation in [encode_pair(encode, *pair)])
    scoring = [call for call in evaluation.calls if call.scores_prompt]
    assert len(expected) == 21
    assert sorted(call.prompt for call in scoring) == expected
    naive = sorted(encode(context) + encode(continuation)
                   for doc in evaluation.mc_pairs() for context, continuation in doc)
    assert naive != expected, "the data should exercise lm-eval's moving of the space"
    for call in scoring:
        params = call.params
        assert (params.max_tokens, params.logprobs, params.prompt_logprobs) == (1, 1, 1)
        assert params.is_greedy


def test_loglikelihoods_equal_hf(evaluation: Evaluation,
                                 hf_scores: dict[Pair, tuple[float, bool]]) -> None:
    worst = 0.0
    flags = []
    for sample, pairs in zip(evaluation.samples[MC_TASK], evaluation.mc_pairs(), strict=True):
        for pair, (ll, greedy) in zip(pairs, reported(sample), strict=True):
            hf_ll, hf_greedy = hf_scores[pair]
            worst = max(worst, abs(ll - hf_ll))
            assert abs(ll - hf_ll) < TOLERANCE, (pair, ll, hf_ll)
            assert greedy == hf_greedy, (pair, ll)
            flags.append(greedy)
    assert set(flags) == {True, False}, "the data should give greedy and non-greedy choices"
    print(f"max |lm-eval - transformers| loglikelihood: {worst:.2e}")


def test_acc_equals_hf_accuracy(evaluation: Evaluation,
                                hf_scores: dict[Pair, tuple[float, bool]]) -> None:
    """acc = share of questions whose answer has the highest loglikelihood (first one on a
    tie, as numpy's argmax), computed here from transformers' numbers."""
    correct = []
    for sample, pairs in zip(evaluation.samples[MC_TASK], evaluation.mc_pairs(), strict=True):
        scores = [hf_scores[pair][0] for pair in pairs]
        right = float(scores.index(max(scores)) == sample["doc"]["answer"])
        assert sample["acc"] == right, sample["doc"]
        correct.append(right)
    assert 0 < sum(correct) < len(correct), "acc should be neither 0 nor 1 on this data"
    assert evaluation.results["results"][MC_TASK]["acc,none"] == pytest.approx(
        sum(correct) / len(correct), abs=1e-12)


def test_generations_equal_offline_greedy(evaluation: Evaluation, make_llm: Callable,
                                          encode: Encode) -> None:
    """lm-eval sends each prompt as token ids (no special tokens) with max_gen_toks and
    its `until` as stop strings; the offline engine given the same gives the same text.
    (On its concurrent path lm-eval 0.4.13 does not add the EOS text to the stop strings;
    the engine stops at the EOS token either way.)"""
    samples = evaluation.samples[GEN_TASK]
    prompts = [encode(sample["doc"]["prompt"]) for sample in samples]
    generating = [call for call in evaluation.calls if not call.scores_prompt]
    assert sorted(call.prompt for call in generating) == sorted(prompts)
    for call in generating:
        assert call.params.max_tokens == MAX_GEN_TOKS
        assert call.params.is_greedy and call.params.seed == SEED
        assert call.params.stop_strings == UNTIL

    params = SamplingParams(temperature=0.0, max_tokens=MAX_GEN_TOKS, stop=UNTIL, seed=SEED)
    outputs = [o.outputs[0] for o in make_llm(max_model_len=MAX_MODEL_LEN)
               .generate(prompts, params)]
    for sample, output in zip(samples, outputs, strict=True):
        assert sample["resps"] == [[output.text]]
        assert sample["filtered_resps"] == [output.text]
    # the data covers the three ways an answer ends: end of text, stop string, length
    assert [(o.finish_reason, o.stop_reason) for o in outputs] == [
        ("stop", None), ("length", None), ("stop", "\n")]


def normalized(text: str) -> str:
    """exact_match's options in kvscope_gen.yaml: surrounding spaces, case and
    punctuation ignored."""
    return text.strip().lower().translate(str.maketrans("", "", string.punctuation))


def test_exact_match_reported(evaluation: Evaluation) -> None:
    scores = []
    for sample in evaluation.samples[GEN_TASK]:
        expected = float(normalized(sample["filtered_resps"][0]) ==
                         normalized(sample["target"]))
        assert sample["exact_match"] == expected, sample["filtered_resps"]
        scores.append(expected)
    assert scores == [1.0, 0.0, 1.0]
    result = evaluation.results["results"][GEN_TASK]
    assert result["exact_match,none"] == pytest.approx(2 / 3, abs=1e-12)
    assert "exact_match_stderr,none" in result
