"""The workload of a serving benchmark: which prompts are sent, how many tokens each
asks for, and when each arrives.

Prompts are seeded random windows of a bundled English corpus. When the server can
tokenize (POST /tokenize and /detokenize, as kvscope and vLLM offer), a window is cut
in the server's own token ids, turned back into text, and re-measured by the server:
decoding and re-encoding a window does not always give the same number of tokens (a
cut can split a merge), so the window is widened or narrowed until the server counts
exactly `input_len` tokens. Without a tokenizer, a window of about 4 characters per
token is taken instead and its token count is left unknown.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CORPUS_PATH = Path(__file__).resolve().parent / "data" / "computing_history.txt"
CHARS_PER_TOKEN = 4  # the rough estimate used when the server cannot tokenize
MAX_FIT_ROUNDS = 16  # re-measurements of one window before settling for the closest


@dataclass(slots=True)
class BenchRequest:
    prompt: str
    output_len: int
    prompt_len: int | None = None  # tokens as the server counts them; None if unknown


class Tokenizer(Protocol):
    """The server's tokenizer (or a stand-in with the same behaviour)."""

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    async def decode(self, ids: list[int]) -> str: ...


def load_corpus(path: Path = CORPUS_PATH) -> str:
    return path.read_text(encoding="utf-8")


def _cyclic_window(items: list, start: int, length: int) -> list:
    """items[start:start + length], wrapping around to the beginning as often as needed."""
    repeats = math.ceil((start + length) / len(items))
    return (items * repeats)[start:start + length]


async def fit_window(tokenizer: Tokenizer, ids: list[int], start: int,
                     input_len: int) -> tuple[str, int]:
    """Text of a window of `ids` near `start` that the tokenizer encodes (with special
    tokens, as a prompt is encoded) to `input_len` tokens; the closest found if none is
    exact after MAX_FIT_ROUNDS tries. Returns (text, its token count).

    The width is corrected by the miss each round. When the count jumps over the
    target (".\n" + "\n" → ".\n\n" makes width 32 count 31 and width 33 count 33),
    the window starts one token later and tries again."""
    width, best, tried = input_len, None, set()
    for _ in range(MAX_FIT_ROUNDS):
        tried.add((start, width))
        text = await tokenizer.decode(_cyclic_window(ids, start, width))
        count = len(await tokenizer.encode(text))
        if best is None or abs(count - input_len) < abs(best[1] - input_len):
            best = (text, count)
        if count == input_len:
            break
        width += input_len - count
        if width < 1 or (start, width) in tried:
            start, width = (start + 1) % len(ids), input_len
    assert best is not None
    return best


async def corpus_workload(corpus: str, tokenizer: Tokenizer | None, num_prompts: int,
                          input_len: int, output_len: int, seed: int) -> list[BenchRequest]:
    """`num_prompts` prompts cut from `corpus` at seeded random offsets."""
    if input_len < 1 or num_prompts < 1:
        raise ValueError("input_len and num_prompts must be at least 1")
    rng = random.Random(seed)
    if tokenizer is None:
        chars = list(corpus)
        starts = [rng.randrange(len(chars)) for _ in range(num_prompts)]
        return [BenchRequest("".join(_cyclic_window(chars, s, input_len * CHARS_PER_TOKEN)),
                             output_len) for s in starts]
    ids = await tokenizer.encode(corpus, add_special_tokens=False)
    starts = [rng.randrange(len(ids)) for _ in range(num_prompts)]
    requests = []
    for start in starts:
        text, count = await fit_window(tokenizer, ids, start, input_len)
        requests.append(BenchRequest(text, output_len, count))
    return requests


def dataset_workload(path: Path, default_output_len: int) -> list[BenchRequest]:
    """Requests from a JSONL file of {"prompt": str, "output_len": int (optional)}."""
    requests = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt = row["prompt"]
                output_len = int(row.get("output_len", default_output_len))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}:{number}: expected {{\"prompt\": str, "
                                 f"\"output_len\": int}}: {exc}") from exc
            if not isinstance(prompt, str) or output_len < 1:
                raise ValueError(f"{path}:{number}: prompt must be text and output_len >= 1")
            requests.append(BenchRequest(prompt, output_len))
    if not requests:
        raise ValueError(f"{path}: no requests")
    return requests


def arrival_times(num_requests: int, rate: float, seed: int) -> list[float]:
    """Send times in seconds from the start: a Poisson process of `rate` requests/s
    (exponential gaps from a seeded RNG), the first at 0; all 0 when rate is inf."""
    if rate <= 0:
        raise ValueError(f"the request rate must be > 0 (or inf); got {rate}")
    if math.isinf(rate):
        return [0.0] * num_requests
    rng = random.Random(seed)
    times, now = [], 0.0
    for i in range(num_requests):
        if i:
            now += rng.expovariate(rate)
        times.append(now)
    return times
