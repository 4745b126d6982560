r"""A quantized base that starts with a low-rank part: W ≈ Q + L1 L2, only L1 L2 trains.

    x ─┬─► Q: QuantizedLinear (bitsandbytes / HQQ codes), frozen ─────────┐
       └─► LoRA: scale · B A x, B A = L1 L2 / scale at the start, trained ─(+)─► y ≈ W x

LoftQ (`loftq.py`) and LQ-LoRA (`lq_lora.py`) both end here: each targeted nn.Linear is
replaced by its quantized part Q and a lorakit LoRA is attached whose product starts at
the residual's low-rank part. lorakit's LoRA multiplies B A by scale = alpha / r, so the
factors are L2 / sqrt(scale) and L1 / sqrt(scale): scale · B A = L1 L2 exactly, and the
singular values are split evenly between A and B (as PEFT's LoftQ splits them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..adapters import Adapters, attach
from ..adapters.targets import matches
from ..config import LoRAConfig
from ..errors import LoraKitError
from ..layers.quantized import QuantizedLinear


@dataclass
class Decomposition:
    """W ≈ Q + L1 L2 for one matrix: Q quantized (its QuantizedLinear holds the codes), L1
    (out × r) and L2 (r × in) full precision, `error` = ‖W − Q − L1 L2‖_F / ‖W‖_F."""

    quantized: QuantizedLinear
    l1: torch.Tensor
    l2: torch.Tensor
    error: float
    iterations: int = 0


def low_rank(m: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-r approximation of m as (U √S, √S Vᵀ) (Eckart–Young)."""
    u, s, vh = torch.linalg.svd(m.float(), full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def relative_error(weight: torch.Tensor, q: torch.Tensor, l1: torch.Tensor,
                   l2: torch.Tensor) -> float:
    w = weight.float()
    return float(torch.linalg.norm(w - q - l1 @ l2) / torch.linalg.norm(w).clamp_min(1e-12))


def linear_targets(model: nn.Module, targets: list[str] | str, where: str) -> dict[str, nn.Linear]:
    """Path -> nn.Linear for the modules matching the patterns, in model order; a match that
    is not a plain full-precision Linear, or a pattern matching nothing, is an error."""
    patterns = [targets] if isinstance(targets, str) else list(targets)
    found: dict[str, nn.Linear] = {}
    for pattern in patterns:
        hits = {p: m for p, m in model.named_modules() if p and matches(p, pattern)}
        if not hits:
            names = ", ".join(p for p, m in model.named_modules() if isinstance(m, nn.Linear))
            raise LoraKitError(f"{where}: target pattern {pattern!r} matched no module; the "
                               f"model's Linear layers: {names[:300] or '(none)'}")
        for path, module in hits.items():
            if not isinstance(module, nn.Linear):
                raise LoraKitError(f"{where}: module {path!r} is {type(module).__name__}; it "
                                   "decomposes full-precision nn.Linear weights: point the "
                                   "pattern at those")
            found[path] = module
    order = {p: i for i, (p, _) in enumerate(model.named_modules())}
    return dict(sorted(found.items(), key=lambda kv: order[kv[0]]))


def _set_child(model: nn.Module, path: str, child: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, child)


@torch.no_grad()
def attach_low_rank(model: nn.Module, parts: dict[str, Decomposition], rank: int,
                    alpha: float | None = None, name: str = "default") -> Adapters:
    """Put each part's QuantizedLinear in place of its Linear (keeping the bias) and attach a
    lorakit LoRA starting at its L1 L2; returns the model's handle."""
    config = LoRAConfig(rank=rank, alpha=float(rank if alpha is None else alpha),
                        targets=list(parts), method="lora")
    for path, part in parts.items():
        if part.l1.shape[1] != rank:
            raise LoraKitError(f"module {path!r}: its low-rank part has rank {part.l1.shape[1]}, "
                               f"the adapter {rank}")
        part.quantized.train(model.get_submodule(path).training)
        _set_child(model, path, part.quantized)
    adapters = attach(model, config, name=name)
    for path, variant in adapters.variants(name).items():
        root = math.sqrt(variant.scale)
        variant.lora_A.copy_(parts[path].l2 / root)
        variant.lora_B.copy_(parts[path].l1 / root)
    return adapters


def quantized_weight_bits(layer: QuantizedLinear) -> float:
    """Storage bits per weight of a QuantizedLinear: codes, scales and zero points."""
    return 8.0 * layer.nbytes() / (layer.in_features * layer.out_features)
