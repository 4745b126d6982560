"""Which library holds a quantized base: forward+backward time and output error on a CPU.

    python -m lorakit.benchmarks.studies.quant_backends [--repeats 7] [--iters 20] [--threads 1]

The three Linear shapes of SmolLM2-135M (hidden 576, MLP 1536: the up/gate projection
576 → 1536, the down projection 1536 → 576, an attention projection 576 → 576), a
weight drawn N(0, 0.02) (seed 0, SmolLM2's initializer range) and a batch of 64 input
rows. Each backend runs what LoRA training asks of a frozen base: the forward, and the
backward to the input (the codes get no gradient). Times are per forward+backward,
the median over `repeats` rounds of `iters` calls each, the backends in turns within a
round (order reversed every other round), on `threads` threads. The error is
‖y − y_fp32‖ / ‖y_fp32‖ on the same input; bytes are the quantized weight's (codes,
scales, zero points), against 4 bytes per fp32 weight.

    fp32              nn.Linear, the reference
    bnb nf4 / fp4     bitsandbytes Linear4bit (QLoRA's kernels), group 64, double quant
    hqq int8/4/3/2    HQQ's HQQLinear, group 64, its PyTorch backend
    torchao nf4       torchao's NF4Tensor (`to_nf4`, `linear_nf4`: torchtune's QLoRA),
                      group 64, scaler block 256 (64 for 576 × 576, whose 5184 scalers
                      256 does not divide); not a lorakit dependency: install
                      torchao==0.18.0 to include it

The table is the one in docs/compressed.md (## Quantization).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from lorakit.layers.quantized import QuantizedLinear

SHAPES = {"up 576→1536": (576, 1536), "down 1536→576": (1536, 576), "attn 576→576": (576, 576)}
ROWS = 64
LORAKIT = {"bnb nf4": "nf4", "bnb fp4": "fp4", "hqq int8": "int8", "hqq int4": "int4",
           "hqq int3": "int3", "hqq int2": "int2"}


def backends(weight: torch.Tensor) -> dict[str, tuple]:
    """name -> (forward callable, bytes of the weight) for one fp32 weight (out × in)."""
    out_f, in_f = weight.shape
    dense = nn.Linear(in_f, out_f, bias=False).requires_grad_(False)
    with torch.no_grad():
        dense.weight.copy_(weight)
    found = {"fp32": (dense, weight.numel() * 4)}
    for name, spec in LORAKIT.items():
        layer = QuantizedLinear(weight, None, spec)
        found[name] = (layer, layer.nbytes())
    try:
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import linear_nf4, to_nf4
    except ImportError:
        return found
    scalers = weight.numel() // 64       # torchao needs a scaler block that divides them
    block = next(b for b in (256, 128, 64, 32) if scalers % b == 0)
    nf4 = to_nf4(weight.clone(), block_size=64, scaler_block_size=block)
    nbytes = sum(t.numel() * t.element_size() for t in (
        nf4.quantized_data, nf4.quantized_scalers, nf4.quantization_factor, nf4.nf4))
    found["torchao nf4"] = (lambda x: linear_nf4(input=x, weight=nf4), nbytes)
    return found


def forward_backward(fn, x: torch.Tensor) -> None:
    x.grad = None
    fn(x).sum().backward()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    results = {}
    for shape_name, (in_f, out_f) in SHAPES.items():
        weight = torch.randn(out_f, in_f, generator=g) * 0.02
        x = torch.randn(ROWS, in_f, generator=g).requires_grad_(True)
        found = backends(weight)
        with torch.no_grad():
            ref = found["fp32"][0](x)
        times = {name: [] for name in found}
        for fn, _ in found.values():         # warm-up: first calls allocate and dispatch
            forward_backward(fn, x)
        names = list(found)
        for r in range(a.repeats):
            for name in (names if r % 2 == 0 else names[::-1]):
                fn = found[name][0]
                t0 = time.perf_counter()
                for _ in range(a.iters):
                    forward_backward(fn, x)
                times[name].append((time.perf_counter() - t0) / a.iters)
        rows = {}
        for name, (fn, nbytes) in found.items():
            with torch.no_grad():
                y = fn(x)
            rows[name] = {"ms": round(1000 * statistics.median(times[name]), 3),
                          "rel_error": float((y - ref).norm() / ref.norm()),
                          "bits_per_weight": round(8 * nbytes / weight.numel(), 2)}
        results[shape_name] = rows
    print(json.dumps({"results": results, "threads": a.threads, "repeats": a.repeats,
                      "iters": a.iters, "rows": ROWS}, indent=2))
    print(table(results))
    return results


def table(results: dict) -> str:
    shapes = list(results)
    names = list(results[shapes[0]])
    head = ("| backend | bits / weight | " + " | ".join(f"{s}: ms, rel. error" for s in shapes)
            + " |")
    lines = [head, "|---|---:|" + "---:|" * len(shapes)]
    for name in names:
        cells = [f"{results[s][name]['ms']:.2f}, {results[s][name]['rel_error']:.4f}"
                 for s in shapes]
        bits = results[shapes[0]][name]["bits_per_weight"]
        lines.append(f"| {name} | {bits} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
