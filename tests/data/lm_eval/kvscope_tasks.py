"""Datasets of the kvscope lm-eval tasks: the JSONL files next to this module, read in
memory (found from this file, not the working directory; nothing downloaded or cached)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

HERE = Path(__file__).parent


def _test_split(name: str) -> dict[str, datasets.Dataset]:
    rows = [json.loads(line) for line in (HERE / name).read_text().splitlines() if line]
    return {"test": datasets.Dataset.from_list(rows)}


def multiple_choice(**_metadata: Any) -> dict[str, datasets.Dataset]:
    """custom_dataset of kvscope_mc (lm-eval passes the task metadata; unused)."""
    return _test_split("kvscope_mc.jsonl")


def generate_until(**_metadata: Any) -> dict[str, datasets.Dataset]:
    """custom_dataset of kvscope_gen."""
    return _test_split("kvscope_gen.jsonl")
