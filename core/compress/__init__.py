"""Compressed bases: quantized and pruned weights under a LoRA (issue #36).

    loftq.py           LoftQ: Q + B A ≈ W by alternating quantization and SVD
    lq_lora.py         LQ-LoRA: the same decomposition, a (bits, group) per matrix chosen
                       by an integer linear program under a memory budget
    l4q.py             L4Q's export: the quantized model a `l4q` adapter trained
    l4q_format.py      reading that export back with torch and safetensors alone
    quantized_start.py a quantized base plus a LoRA that starts at a given low-rank part
"""
