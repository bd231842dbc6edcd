"""Response bodies and stream chunks in OpenAI's shapes, built from RequestOutputs.

A stream sends deltas: each choice remembers how much text and how many tokens it
has already sent, and each chunk carries only what is new.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from kvscope.outputs import CompletionOutput, Logprob, PromptLogprobs


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(payload: dict[str, Any] | str) -> str:
    """One Server-Sent Event line; `[DONE]` ends an OpenAI stream."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


@dataclass(slots=True)
class ChoiceCursor:
    """What one choice of a stream has sent so far."""

    text_chars: int = 0
    tokens: int = 0
    finished: bool = False

    def advance(self, completion: CompletionOutput) -> tuple[str, int, int]:
        """The new text and the token range [begin, end) not yet sent."""
        text = completion.text[self.text_chars:]
        begin, end = self.tokens, len(completion.token_ids)
        self.text_chars = len(completion.text)
        self.tokens = end
        return text, begin, end


class TokenText:
    """Token ids → their text, as logprobs report them (cached per id)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = self.tokenizer.decode([token_id])
        return text


def completion_logprobs(token_text: TokenText, token_ids: list[int],
                        logprobs: list[dict[int, Logprob] | None], first_offset: int,
                        num_top: int | None = None) -> dict[str, Any]:
    """The legacy completions `logprobs` object for a run of tokens. An entry of None
    (the first prompt token: nothing predicts it) gives null logprobs; `num_top` keeps
    only that many alternatives of each token (besides the token itself)."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    offset = first_offset
    for token_id, alternatives in zip(token_ids, logprobs, strict=True):
        text = token_text(token_id)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        if alternatives is None:
            token_logprobs.append(None)
            top.append(None)
            continue
        chosen = alternatives.get(token_id)
        token_logprobs.append(chosen.logprob if chosen else None)
        top.append({token_text(t): lp.logprob for t, lp in _by_rank(alternatives)
                    if num_top is None or lp.rank <= num_top or t == token_id})
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top,
            "text_offset": offsets}


def joined_logprobs(first: dict[str, list[Any]], then: dict[str, list[Any]]) -> dict[str, Any]:
    """Two legacy `logprobs` objects one after the other (an echoed prompt's, then the
    completion's)."""
    return {key: first[key] + then[key] for key in first}


def chat_logprobs(token_text: TokenText, token_ids: list[int],
                  logprobs: list[dict[int, Logprob]], num_top: int) -> dict[str, Any]:
    """The chat `logprobs` object: one entry per token with its top alternatives."""
    content = []
    for token_id, alternatives in zip(token_ids, logprobs, strict=True):
        chosen = alternatives.get(token_id)
        ranked = [(t, lp) for t, lp in _by_rank(alternatives) if lp.rank <= num_top]
        content.append({
            **_chat_token(token_text(token_id), chosen.logprob if chosen else None),
            "top_logprobs": [_chat_token(token_text(t), lp.logprob) for t, lp in ranked],
        })
    return {"content": content}


def prompt_logprobs_json(token_text: TokenText, entries: PromptLogprobs | None
                         ) -> list[dict[str, dict[str, Any]] | None] | None:
    """prompt_logprobs as vLLM returns them: per prompt token, None for the first, then
    {token id: {logprob, rank, decoded_token}} for the token and its top alternatives."""
    if entries is None:
        return None
    return [None if entry is None else
            {str(t): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": token_text(t)}
             for t, lp in entry.items()}
            for entry in entries]


def _chat_token(text: str, logprob: float | None) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _by_rank(alternatives: dict[int, Logprob]) -> list[tuple[int, Logprob]]:
    return sorted(alternatives.items(), key=lambda item: item[1].rank)


def now() -> int:
    return int(time.time())
