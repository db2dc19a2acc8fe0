"""Distributed training: what gradscope needs to follow DDP and FSDP2 (``fully_shard``).

``layout`` tells how a model is spread over processes (plain, DDP, FSDP2) and refuses what the
watch cannot follow, with the fix; ``shards`` reads a sharded parameter's gradient (its local
shard) and combines per-rank statistics into the whole gradient's with one small all_gather
per backward pass; ``replicas`` compares parameters, buffers and gradients across ranks
(:func:`gradscope.check_replicas`). Nothing here imports the watch: ``gradscope._watch`` calls
these pieces, so the recorder itself stays one code path.
"""
