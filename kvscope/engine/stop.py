"""When a new token ends a sequence: stop tokens, stop strings, lengths."""

from __future__ import annotations

from collections.abc import Collection

from kvscope.engine.sequence_group import TrackedRequest
from kvscope.request import RequestStatus


def check_stop(tracked: TrackedRequest, token: int, eos_token_ids: Collection[int],
               max_model_len: int) -> RequestStatus | None:
    """Whether `token` (just appended) ends the sequence, and how. Stops count only once
    min_tokens are out; a stop token's text is left out of the output unless
    include_stop_str_in_output (as in vLLM). The detokenizer sees the token here, so
    stop strings are found on the text as it grows."""
    request = tracked.request
    params = request.sampling_params
    may_stop = request.num_output_tokens >= params.min_tokens
    is_eos = token in eos_token_ids
    stop_token = may_stop and ((not params.ignore_eos and is_eos)
                               or token in (params.stop_token_ids or ()))
    if tracked.detok is not None and (not stop_token or params.include_stop_str_in_output):
        stop = tracked.detok.append(token, check_stop=may_stop)
        if stop is not None:
            request.stop_reason = stop
            return RequestStatus.FINISHED_STOPPED
    if stop_token:
        if not is_eos or params.ignore_eos:
            request.stop_reason = token
        return RequestStatus.FINISHED_STOPPED
    if params.max_tokens is not None and request.num_output_tokens >= params.max_tokens:
        return RequestStatus.FINISHED_LENGTH
    if request.num_tokens >= max_model_len:
        return RequestStatus.FINISHED_LENGTH
    return None
