"""kvscope: a small, readable LLM inference engine, and a scope to watch it work."""

from kvscope.engine.llm import LLM
from kvscope.engine.llm_engine import LLMEngine
from kvscope.outputs import CompletionOutput, Logprob, RequestOutput
from kvscope.request import RequestError
from kvscope.sampling_params import SamplingParams

__all__ = ["LLM", "CompletionOutput", "LLMEngine", "Logprob", "RequestError", "RequestOutput",
           "SamplingParams"]
__version__ = "0.1.0"
