"""Compressed bases: smaller frozen models to put adapters on (issue #36).

    structure.py       where a transformers model's prunable units are: attention heads
                       (rows of q/k/v, columns of o) and MLP channels (rows of gate/up,
                       columns of down), per decoder or encoder block
    prune.py           PruneSpec, prune(model, scores, spec) -> PruneReport: structured
                       pruning by slicing the weights (and the adapters on them), the
                       config kept consistent so the model saves and loads back
    importance.py      unit_scores(model, criterion, ...): magnitude, LLM-Pruner's Taylor,
                       LoRAPrune's LoRA-guided criterion, per head and per channel
    prune_callback.py  IterativePruning: LoRAPrune's schedule as a Lightning callback
    loram.py           LoRAM: train LoRA on the pruned base, recover it to the full base

Nothing here is imported by `import lorakit`; import the module you need
(`from lorakit.compress.prune import prune`).
"""
