"""N-gram prompt lookup: draft what followed the last time the text ended this way.

Take the request's last n tokens (n from prompt_lookup_max down to prompt_lookup_min),
find their latest earlier occurrence in its own prompt and output, and propose the k
tokens that followed it. Costs no model at all, and pays off where the output copies
its input: edits, rewrites, summaries that quote, code that repeats names (prompt
lookup decoding, the idea behind vLLM's ngram method).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvscope.request import Request
from kvscope.speculative.proposer import Draft


def propose_ngram(tokens: Sequence[int], k: int, min_n: int, max_n: int) -> list[int]:
    """Up to k tokens following the latest earlier match of the longest suffix of
    `tokens` (between min_n and max_n long) that occurs before; [] when none does."""
    length = len(tokens)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        suffix = list(tokens[length - n:])
        first = suffix[0]
        for start in range(length - n - 1, -1, -1):  # latest first: likeliest to repeat
            if tokens[start] == first and list(tokens[start:start + n]) == suffix:
                return list(tokens[start + n:start + n + k])
    return []


class NgramProposer:
    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n = min_n
        self.max_n = max_n

    def propose(self, requests: Sequence[Request], limits: Sequence[int]) -> list[Draft]:
        return [Draft(propose_ngram(request.all_token_ids, k, self.min_n, self.max_n))
                for request, k in zip(requests, limits, strict=True)]

    def forget(self, request_id: str) -> None:
        pass
