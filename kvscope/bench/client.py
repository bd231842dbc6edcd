"""The HTTP side of the serving benchmark: an httpx client for one OpenAI-compatible
server, its model name, its tokenizer (when it exposes one), and one streamed request
timed chunk by chunk into a RequestRecord."""

from __future__ import annotations

import json
import time
from itertools import pairwise
from typing import Any

import httpx

from kvscope.bench.serve_stats import RequestRecord
from kvscope.bench.workload import BenchRequest

CHAT_ENDPOINT = "/v1/chat/completions"


def make_client(base_url: str, api_key: str | None, timeout_s: float) -> httpx.AsyncClient:
    """One connection per in-flight request, with no pool cap: a capped pool would
    queue requests inside the client and count the wait as server latency."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                             timeout=httpx.Timeout(timeout_s),
                             limits=httpx.Limits(max_connections=None,
                                                 max_keepalive_connections=None))


async def default_model(client: httpx.AsyncClient) -> str:
    """The first model GET /v1/models lists."""
    response = await client.get("/v1/models")
    response.raise_for_status()
    models = response.json().get("data") or []
    if not models:
        raise ValueError(f"{client.base_url}/v1/models lists no model; pass --model")
    return models[0]["id"]


class ServerTokenizer:
    """The server's tokenizer through POST /tokenize and /detokenize (kvscope, vLLM)."""

    def __init__(self, client: httpx.AsyncClient, model: str) -> None:
        self.client = client
        self.model = model

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        response = await self.client.post("/tokenize", json={
            "model": self.model, "prompt": text, "add_special_tokens": add_special_tokens})
        response.raise_for_status()
        return list(response.json()["tokens"])

    async def decode(self, ids: list[int]) -> str:
        response = await self.client.post("/detokenize",
                                          json={"model": self.model, "tokens": ids})
        response.raise_for_status()
        return response.json()["prompt"]

    @classmethod
    async def probe(cls, client: httpx.AsyncClient, model: str) -> ServerTokenizer | None:
        """The tokenizer if both routes answer, else None."""
        tokenizer = cls(client, model)
        try:
            await tokenizer.decode(await tokenizer.encode("Hello, world."))
        except (httpx.HTTPError, KeyError, TypeError, ValueError):
            return None
        return tokenizer


def request_body(endpoint: str, model: str, request: BenchRequest, temperature: float,
                 ignore_eos: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "max_tokens": request.output_len, "temperature": temperature,
        "stream": True, "stream_options": {"include_usage": True}}
    if endpoint.rstrip("/") == CHAT_ENDPOINT:
        body["messages"] = [{"role": "user", "content": request.prompt}]
    else:
        body["prompt"] = request.prompt
    if ignore_eos:
        body["ignore_eos"] = True
    return body


def sse_data(line: str) -> str | None:
    """The payload of an SSE `data:` line; None for blank lines, comments, other fields."""
    if not line.startswith("data:"):
        return None
    return line[len("data:"):].strip()


def chunk_text(chunk: dict[str, Any]) -> str:
    """The text a completion or chat chunk carries ("" for role, usage, finish chunks)."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "text" in choice:
        return choice["text"] or ""
    return (choice.get("delta") or {}).get("content") or ""


async def stream_request(client: httpx.AsyncClient, endpoint: str, body: dict[str, Any],
                         record: RequestRecord) -> RequestRecord:
    """Send one streamed request and fill `record` with its timings; any failure (HTTP
    status, broken stream, error chunk, no text at all) marks it failed, never raises."""
    start = time.perf_counter()
    content_times: list[float] = []
    usage_tokens = None
    try:
        async with client.stream("POST", endpoint, json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode("utf-8", "replace")
                record.error = f"HTTP {response.status_code}: {detail[:300]}"
                return record
            async for line in response.aiter_lines():
                arrived = time.perf_counter() - start
                data = sse_data(line)
                if data is None:
                    continue
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"error in the stream: {chunk['error']}")
                if chunk_text(chunk):
                    content_times.append(arrived)
                if chunk.get("usage"):
                    record.prompt_tokens = chunk["usage"].get("prompt_tokens")
                    usage_tokens = chunk["usage"].get("completion_tokens")
    except Exception as exc:  # any failure counts as one failed request
        record.error = f"{type(exc).__name__}: {exc}"
        return record
    record.e2e_s = time.perf_counter() - start
    if not content_times:
        record.error = "the response carried no text"
        return record
    record.ttft_s = content_times[0]
    record.itl_s = [b - a for a, b in pairwise(content_times)]
    record.output_tokens = usage_tokens if usage_tokens is not None else len(content_times)
    record.success = True
    return record
