"""The numbers behind the lessons on the model's insides (tokens, embeddings, attention
per head, RoPE, the decoder block, logits and sampling, prefill vs decode, why cache
K and V). Each module answers one lesson's request from a real run of kvscope's own
forward pass on the server's loaded weights (model/probe.py), in a private engine."""
