"""K/V through a directory (e.g. /dev/shm): the producer writes a finished prefill's rows
to a file named by a hash of the prompt's tokens, the consumer reads it and deletes it.
Both servers must see the same directory: one machine, or a shared file system."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kvscope.kv_transfer.base import KVConnector, LoadFailed
from kvscope.kv_transfer.kv_rows import prompt_key, read_rows
from kvscope.request import Request

DEFAULT_PATH = "/dev/shm/kvscope-kv"


class SharedStorageConnector(KVConnector):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.directory = Path(self.config.option("shared_storage_path", DEFAULT_PATH))
        self.directory.mkdir(parents=True, exist_ok=True)

    def _file(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def save_kv(self, request: Request, block_ids: list[int], num_tokens: int
                ) -> tuple[bool, dict[str, Any]]:
        assert self.pool is not None
        began = time.perf_counter()
        rows = read_rows(self.pool, block_ids, 0, num_tokens)
        path = self._file(prompt_key(request.prompt_token_ids))
        partial = path.with_suffix(f".{os.getpid()}.partial")
        save_file({"rows": rows}, str(partial))
        partial.replace(path)  # a reader never sees half a file
        num_bytes = rows.numel() * rows.element_size()
        self.stats.num_sent += 1
        self.stats.bytes_sent += num_bytes
        self._emit(request.request_id, "save", num_tokens, num_bytes,
                   time.perf_counter() - began)
        return False, {"shared_storage_path": str(self.directory)}

    def fetch(self, params: dict[str, Any], start: int, stop: int) -> torch.Tensor:
        path = self._file(str(params.get("prompt_key")))
        deadline = time.monotonic() + self.load_timeout_s
        while not path.exists():
            if time.monotonic() > deadline:
                raise LoadFailed(f"no K/V file {path.name} after {self.load_timeout_s:.0f} s")
            time.sleep(0.01)
        try:
            rows = load_file(str(path))["rows"]
        finally:
            path.unlink(missing_ok=True)  # taken: the next prefill of this prompt writes again
        return rows[:, :, start:stop].contiguous()
