"""LLM: the offline API, shaped like vLLM's.

    llm = LLM()                      # the bundled SmolLM2-135M-Instruct
    outs = llm.generate(["Hello"], SamplingParams(max_tokens=32))
    print(outs[0].outputs[0].text)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvscope.config import EngineConfig
from kvscope.engine.llm_engine import LLMEngine
from kvscope.events import EventSink
from kvscope.model.loader import LoadedModel
from kvscope.model.tokenizer import apply_chat_template
from kvscope.outputs import RequestOutput
from kvscope.sampling_params import BeamSearchParams, SamplingParams

Prompt = str | Sequence[int]
ChatMessages = list[dict[str, str]]


class LLM:
    def __init__(self, model: str | None = None, *, sink: EventSink | None = None,
                 loaded: LoadedModel | None = None, load_progress: bool = False,
                 draft_loaded: LoadedModel | None = None, **engine_options: Any) -> None:
        """`loaded` reuses a model already in memory (to compare engine settings
        without reloading weights); its dtype must match the `dtype` option;
        `draft_loaded` does the same for a speculative draft model.
        `load_progress` shows a progress bar while the weights load."""
        self.config = EngineConfig.from_kwargs(model=model, **engine_options)
        if loaded is not None and loaded.dtype != self.config.dtype:
            raise ValueError(f"loaded model is {loaded.dtype}, but dtype is {self.config.dtype}")
        self.engine = LLMEngine(self.config, sink=sink, loaded=loaded,
                                load_progress=load_progress, draft_loaded=draft_loaded)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def shutdown(self) -> None:
        """Stop the engine's worker processes (with tensor_parallel_size > 1)."""
        self.engine.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = False, priority: Sequence[int] | None = None,
                 cache_salt: str | Sequence[str | None] | None = None) -> list[RequestOutput]:
        """Complete every prompt; outputs come back in input order. `priority` (one
        per prompt) is used by the priority policy; `cache_salt` (one, or one per
        prompt) keeps requests with different salts from sharing cached blocks."""
        prompt_list = _as_prompt_list(prompts)
        params = _params_per_prompt(sampling_params, len(prompt_list))
        priorities = list(priority) if priority is not None else [0] * len(prompt_list)
        salts = list(cache_salt) if isinstance(cache_salt, (list, tuple)) \
            else [cache_salt] * len(prompt_list)
        if len(priorities) != len(prompt_list) or len(salts) != len(prompt_list):
            raise ValueError("give one priority and one cache_salt per prompt")
        ids = []
        try:
            for prompt, p, rank, salt in zip(prompt_list, params, priorities, salts, strict=True):
                ids.append(self.engine.add_request(None, prompt, p, priority=rank,
                                                   cache_salt=salt))
        except Exception:
            self.engine.abort_request(ids)
            raise
        return self._run(ids, use_tqdm)

    def beam_search(self, prompts: Prompt | Sequence[Prompt],
                    params: BeamSearchParams) -> list[RequestOutput]:
        """Beam search for every prompt, inside the engine (beams share KV blocks);
        each output holds the finished beams, best first."""
        ids: list[str] = []
        try:
            for prompt in _as_prompt_list(prompts):
                ids.append(self.engine.add_beam_request(None, prompt, params))
        except Exception:
            self.engine.abort_request(ids)
            raise
        return self._run(ids, use_tqdm=False)

    def chat(self, messages: ChatMessages | Sequence[ChatMessages],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             use_tqdm: bool = False) -> list[RequestOutput]:
        """Apply the model's chat template to each conversation, then generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.apply_chat_template(c) for c in conversations]
        return self.generate(prompts, sampling_params, use_tqdm)

    def reset_prefix_cache(self) -> int:
        return self.engine.reset_prefix_cache()

    def apply_chat_template(self, messages: ChatMessages) -> list[int]:
        return apply_chat_template(self.tokenizer, messages)

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        done: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), desc="Generating", unit="req")
        wanted = set(ids)
        while self.engine.has_unfinished_requests() and len(done) < len(ids):
            for output in self.engine.step():
                if output.finished and output.request_id in wanted:
                    done[output.request_id] = output
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return [done[i] for i in ids]


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    if prompts and all(isinstance(t, int) for t in prompts):
        return [list(prompts)]  # one prompt given as token ids
    return list(prompts)


def _params_per_prompt(params: SamplingParams | Sequence[SamplingParams] | None,
                       count: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(count)]
    if isinstance(params, SamplingParams):
        return [params] * count
    if len(params) != count:
        raise ValueError(f"got {len(params)} sampling_params for {count} prompts")
    return list(params)
