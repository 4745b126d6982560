r"""LoftQ (Li et al. 2023, "LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large Language
Models"): start QLoRA's training where the quantized model plus the adapter is W.

    Q_t      = quant(W − L1_{t−1} L2_{t−1})          L1_0 L2_0 = 0        (Algorithm 1)
    L1_t L2_t = SVD_r(W − Q_t)                        t = 1 .. T

QLoRA starts at Q = quant(W) with B A = 0, so training first has to undo the
quantization error W − Q, which at 2-3 bits is most of what the adapter can express.
LoftQ alternates the two so that Q + L1 L2 ≈ W at the start (ibid., sec. 3.1-3.2); T = 1
is quant(W) plus the SVD of its residual. The model that comes out has each targeted
Linear as a `QuantizedLinear` (Q, frozen, in the same library quantizer QLoRA uses here)
and a lorakit LoRA whose scale · B A is L1 L2 (`quantized_start.py`).

Two ways to compute it, `backend=`:

    "lorakit"   the alternation above over lorakit's `QuantizedLinear`: any `QuantSpec`
                (nf4 / fp4 through bitsandbytes, int2..int8 through HQQ), double
                quantization as the spec says
    "peft"      PEFT's own `peft.utils.loftq_utils.loftq_init` (peft 0.22: bitsandbytes
                nf4, block 64, no double quantization; runs on a CPU), the second
                baseline; its Q is re-encoded by a `QuantizedLinear` of the same settings,
                which reproduces it (nf4 codes of an nf4-dequantized block are themselves)
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import Adapters
from ..errors import LoraKitError
from ..layers.quantized import QuantizedLinear, QuantSpec
from .quantized_start import (
    Decomposition,
    attach_low_rank,
    linear_targets,
    low_rank,
    relative_error,
)

#: PEFT's LoftQ quantizer (`loftq_init` with num_bits=4): bitsandbytes nf4, block 64, no
#: double quantization
PEFT_SPEC = QuantSpec("nf4", 64, double_quant=False)


@torch.no_grad()
def loftq_decompose(weight: torch.Tensor, spec: QuantSpec | str = "nf4", rank: int = 16,
                    iterations: int = 5, bias: torch.Tensor | None = None) -> Decomposition:
    """Q + L1 L2 ≈ `weight` (out × in) after T = `iterations` alternations (Algorithm 1)."""
    spec = QuantSpec.parse(spec)
    if iterations < 1 or rank < 1:
        raise LoraKitError(f"LoftQ: iterations and rank must be >= 1, got {iterations} and "
                           f"{rank}")
    w = weight.detach().float()
    l1 = w.new_zeros(w.shape[0], rank)
    l2 = w.new_zeros(rank, w.shape[1])
    for _ in range(iterations):
        quantized = QuantizedLinear(w - l1 @ l2, bias, spec)
        q = quantized.dequantize()
        l1, l2 = low_rank(w - q, rank)
    return Decomposition(quantized, l1, l2, relative_error(w, q, l1, l2), iterations)


@torch.no_grad()
def peft_loftq_decompose(weight: torch.Tensor, rank: int = 16, iterations: int = 5,
                         bias: torch.Tensor | None = None) -> Decomposition:
    """The same through PEFT's `loftq_init` (nf4 only: `PEFT_SPEC`)."""
    from peft.utils.loftq_utils import loftq_init

    w = weight.detach().float()
    q, lora_a, lora_b = loftq_init(w, num_bits=4, reduced_rank=rank, num_iter=iterations)
    quantized = QuantizedLinear(q.float(), bias, PEFT_SPEC)
    l1, l2 = lora_b.float(), lora_a.float()
    return Decomposition(quantized, l1, l2,
                         relative_error(w, quantized.dequantize(), l1, l2), iterations)


def loftq(model: nn.Module, targets: list[str] | str, rank: int = 16,
          spec: QuantSpec | str = "nf4", iterations: int = 5, alpha: float | None = None,
          backend: str = "lorakit", name: str = "default", progress: bool = True
          ) -> tuple[Adapters, dict[str, Decomposition]]:
    """Replace every nn.Linear matching `targets` by its LoftQ Q (a QuantizedLinear) and attach
    a lorakit LoRA of rank `rank` (alpha: `alpha`, default r, so scale 1) starting at L1 L2.

    Returns the model's handle and, by module path, the decomposition (its relative error
    ‖W − Q − L1 L2‖ / ‖W‖). `backend`: "lorakit" (any spec) or "peft" (PEFT's `loftq_init`,
    nf4 at block 64 without double quantization only). `progress`: a progress bar over the
    matrices.
    """
    if backend not in ("lorakit", "peft"):
        raise LoraKitError(f"LoftQ backend {backend!r}: use 'lorakit' or 'peft'")
    spec = QuantSpec.parse(spec)
    if backend == "peft" and (spec.scheme, spec.group_size) != ("nf4", 64):
        raise LoraKitError(f"LoftQ backend 'peft' quantizes as PEFT's loftq_init does, "
                           f"{PEFT_SPEC} without double quantization; spec {spec} needs "
                           "backend='lorakit'")
    parts = {}
    linears = linear_targets(model, targets, "LoftQ")
    for path, linear in tqdm(linears.items(), desc="LoftQ", disable=not progress):
        bias = None if linear.bias is None else linear.bias.detach()
        parts[path] = (peft_loftq_decompose(linear.weight, rank, iterations, bias)
                       if backend == "peft" else
                       loftq_decompose(linear.weight, spec, rank, iterations, bias))
    return attach_low_rank(model, parts, rank, alpha, name), parts
