"""Executors run each step's forward pass: in this process (one device), or on
tensor-parallel worker processes (kvscope/worker) that hold the model's shards."""
