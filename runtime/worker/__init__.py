"""A worker holds the model on its device and runs steps on it.

    worker.py        build the model for this rank (implementation, shard, stage) and its runner
    model_runner.py  flatten a scheduled step into one row of tokens + AttentionMetadata, run, sample
    sampler.py       logits -> tokens (+ logprobs), a pure function
    cuda_graph.py    decode steps replayed from captured CUDA graphs
    kv_budget.py     how much GPU memory the KV cache may take
"""
