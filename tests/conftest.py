"""Shared fixtures: the bundled model is loaded once per session and reused by
every engine a test builds (weights are read-only during inference)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from kvscope import LLM
from kvscope.kernels.build import ISAS, kernels_for, runs_here
from kvscope.model.loader import LoadedModel, load_model

SMALL_KV = 64 * 1024 * 1024  # bytes: plenty for tests, quick to allocate


@pytest.fixture(scope="session")
def loaded_fp32() -> LoadedModel:
    return load_model(None, torch.float32)


@pytest.fixture(scope="session")
def loaded_bf16() -> LoadedModel:
    return load_model(None, torch.bfloat16)


@pytest.fixture(scope="session")
def make_llm(loaded_fp32: LoadedModel):
    """Build an fp32 LLM on the bundled model with the given engine options."""

    def build(**options) -> LLM:
        options.setdefault("kv_cache_memory", SMALL_KV)
        options.setdefault("max_model_len", 1024)
        return LLM(dtype="float32", loaded=loaded_fp32, **options)

    return build


@pytest.fixture(scope="session", params=[isa for isa in ISAS if runs_here(isa)])
def kernels(request: pytest.FixtureRequest):
    """The C++ kernels built for each instruction set this CPU runs (AVX-512 machines
    test their AVX2 and generic builds too)."""
    module = kernels_for(request.param)
    if module is None:
        pytest.skip("C++ kernels could not be built here")
    assert module.isa() == request.param
    return module
