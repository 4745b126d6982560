"""Compressed bases: quantized and pruned weights under a LoRA (issue #36).

    quantize.py        quantize(model, spec, targets, keep) -> QuantizeReport: the targeted
                       nn.Linear layers replaced by QuantizedLinear (bitsandbytes, HQQ)
    loftq.py           LoftQ: Q + B A ≈ W by alternating quantization and SVD
    lq_lora.py         LQ-LoRA: the same decomposition, a (bits, group) per matrix chosen
                       by an integer linear program under a memory budget
    l4q.py             L4Q's export: the quantized model a `l4q` adapter trained
    l4q_format.py      reading that export back with torch and safetensors alone
    quantized_start.py a quantized base plus a LoRA that starts at a given low-rank part
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
