"""Incremental detokenization and stop-string matching for one request.

Decoding token by token is wrong for byte-level BPE (one character can span two
tokens), so we decode a short window of recent tokens and emit only the text that
is complete: the decoded window minus what the window's earlier tokens decoded to,
and nothing while it ends in an unfinished character (U+FFFD).
"""

from __future__ import annotations

from typing import Any

_WINDOW = 6  # tokens of left context re-decoded with each new token


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], skip_special_tokens: bool,
                 stop_strings: list[str], include_stop: bool) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self.stop_strings = stop_strings
        self.include_stop = include_stop
        self.ids = list(prompt_ids[-_WINDOW:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""
        self._hold = max((len(s) for s in stop_strings), default=1) - 1

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special)

    def append(self, token_id: int, check_stop: bool = True) -> str | None:
        """Add one token; returns the stop string matched, if any (text is then cut).
        With check_stop False (before min_tokens) stop strings are not searched."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            new_text = full[len(prefix):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            if len(self.ids) > 4 * _WINDOW:  # keep the window short
                drop = self.prefix_offset
                self.ids = self.ids[drop:]
                self.prefix_offset -= drop
                self.read_offset -= drop
            self.text += new_text
            return self._check_stop(len(new_text)) if check_stop else None
        return None

    def _check_stop(self, new_chars: int) -> str | None:
        if not self.stop_strings:
            return None
        search_from = max(0, len(self.text) - new_chars - self._hold)
        best: tuple[int, str] | None = None
        for stop in self.stop_strings:
            at = self.text.find(stop, search_from)
            if at != -1 and (best is None or at < best[0]):
                best = (at, stop)
        if best is None:
            return None
        at, stop = best
        self.text = self.text[:at + len(stop)] if self.include_stop else self.text[:at]
        return stop

    def visible_text(self, finished: bool) -> str:
        """The text safe to show: while running, hold back a tail that may be the start
        of a stop string."""
        if finished or not self._hold:
            return self.text
        return self.text[:max(0, len(self.text) - self._hold)]
