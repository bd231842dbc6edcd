"""`kvscope router`: one OpenAI-compatible front over several servers (kvscope serve or
any OpenAI-compatible one), spreading requests by a policy (policies.py) and passing
answers, streams included, straight through (proxy.py). Data parallelism across
machines: each server keeps its own engine and KV cache, and the router decides
where each request goes."""
