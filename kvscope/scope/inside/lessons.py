"""Every lesson on the model's insides: its path under /scope/api/inside/, the body
it takes and the function that answers it (routes.py serves them all alike)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvscope.model.loader import LoadedModel
from kvscope.scope.inside.attention import AttentionHeadRequest, attention_lesson
from kvscope.scope.inside.block import BlockRequest, block_lesson
from kvscope.scope.inside.embeddings import EmbeddingsRequest, embeddings_lesson
from kvscope.scope.inside.phases import PhasesRequest, phases_lesson
from kvscope.scope.inside.recompute import RecomputeRequest, recompute_lesson
from kvscope.scope.inside.rope import RopeRequest, rope_lesson
from kvscope.scope.inside.sampling import SamplingLessonRequest, sampling_lesson
from kvscope.scope.inside.tokens import TokensRequest, tokens_lesson
from kvscope.scope.lab_limits import LabBudget
from kvscope.serve.protocol import StrictModel

Lesson = Callable[[LoadedModel, Any, LabBudget], dict[str, Any]]

INSIDE_LESSONS: dict[str, tuple[type[StrictModel], Lesson]] = {
    "tokens": (TokensRequest, tokens_lesson),
    "embeddings": (EmbeddingsRequest, embeddings_lesson),
    "attention": (AttentionHeadRequest, attention_lesson),
    "rope": (RopeRequest, rope_lesson),
    "block": (BlockRequest, block_lesson),
    "sampling": (SamplingLessonRequest, sampling_lesson),
    "phases": (PhasesRequest, phases_lesson),
    "recompute": (RecomputeRequest, recompute_lesson),
}
