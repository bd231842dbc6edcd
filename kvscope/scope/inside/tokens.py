"""The tokens lesson: text (or one chat message through the model's chat template)
cut into the real tokenizer's pieces, with each piece's raw bytes, and what those
tokens will cost in the KV cache."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from pydantic import Field

from kvscope.model.loader import LoadedModel
from kvscope.model.tokenizer import apply_chat_template
from kvscope.scope.inside.common import token_text
from kvscope.scope.kv_sizes import kv_bytes_per_token
from kvscope.scope.lab_limits import LabBudget
from kvscope.serve.protocol import StrictModel

MAX_TEXT_CHARS = 4000
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokensRequest(StrictModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    chat: bool = False  # `text` is one user message, templated for the assistant's turn
    system: str | None = Field(None, max_length=MAX_TEXT_CHARS)


def tokens_lesson(loaded: LoadedModel, req: TokensRequest,
                  budget: LabBudget | None = None) -> dict[str, Any]:
    tokenizer = loaded.tokenizer
    if req.chat:
        messages = ([{"role": "system", "content": req.system}] if req.system else [])
        ids = apply_chat_template(tokenizer, [*messages, {"role": "user", "content": req.text}])
    elif req.system is not None:
        raise ValueError("system applies to chat messages only (chat: true)")
    else:
        ids = list(tokenizer.encode(req.text, add_special_tokens=True))
    special = set(tokenizer.all_special_ids)
    rendered = tokenizer.decode(ids, skip_special_tokens=False) if req.chat else req.text
    arch = loaded.arch
    per_token = kv_bytes_per_token(arch.num_layers, arch.num_kv_heads, arch.head_dim,
                                   loaded.dtype.itemsize)
    return {
        "chat": req.chat, "rendered": rendered,
        "template": tokenizer.chat_template if req.chat else None,
        "tokens": [{"id": t, "text": token_text(loaded, t), "bytes": token_bytes(tokenizer, t),
                    "special": t in special} for t in ids],
        "num_tokens": len(ids), "num_special": sum(t in special for t in ids),
        "num_chars": len(rendered), "num_bytes": len(rendered.encode()),
        "kv": {"dtype": str(loaded.dtype).removeprefix("torch."),
               "dtype_bytes": loaded.dtype.itemsize, "num_layers": arch.num_layers,
               "num_kv_heads": arch.num_kv_heads, "head_dim": arch.head_dim,
               "kv_bytes_per_token": per_token, "kv_bytes": per_token * len(ids)},
    }


def token_bytes(tokenizer: Any, token_id: int) -> list[int]:
    """The raw bytes one token stands for. Byte-level BPE vocabularies (GPT-2 style)
    spell each byte as one printable character; SentencePiece ones spell a space as
    '▁' and an unmapped byte as <0xNN>; special tokens are their own text."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if token_id in tokenizer.all_special_ids:
        return list(piece.encode())
    match = _BYTE_TOKEN.fullmatch(piece)
    if match:
        return [int(match.group(1), 16)]
    decoder = _byte_decoder()
    if all(ch in decoder for ch in piece):
        return [decoder[ch] for ch in piece]
    return list(piece.replace("\u2581", " ").encode())


@cache
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's alphabet: bytes that are printable stand for themselves, the
    other 68 are moved to code points 256 and up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1),
                 *range(0xAE, 0xFF + 1)]
    moved = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table |= {chr(256 + i): b for i, b in enumerate(moved)}
    return table
