"""Worker processes: one tensor-parallel rank each, holding a model shard and its KV pool."""
