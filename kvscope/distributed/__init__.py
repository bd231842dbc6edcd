"""Tensor parallelism: how a model's heads, neurons and vocabulary split across ranks,
the sharded layers, and the process group they talk over (torch.distributed)."""
