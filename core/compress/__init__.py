"""Compressed bases: quantized and pruned weights under a LoRA (issue #36).

    quantize.py        quantize(model, spec, targets, keep) -> QuantizeReport: the targeted
                       nn.Linear layers replaced by QuantizedLinear (bitsandbytes, HQQ)
"""
