r"""Adapter layers: a frozen `nn.Linear` plus a trainable low-rank update.

    x ─┬─► base: W (out × in), frozen ───────────────────────────────┐
       │                                                            (+)──► y
       └─► dropout ─► A (r × in) ─► ⊙ λ (r) ─► B (out × r) ─► · scale ─┘

    y = W x + scale · B diag(λ) A x

Plain LoRA (Hu et al. 2021) has its own A and B per matrix and no λ. A weight
update of a pretrained model has a low "intrinsic rank" (ibid., sec. 4 and 7),
so r ≪ min(in, out) loses little, and B = 0 at start makes the adapted model
start exactly at the base. scale = alpha / r (ibid., sec. 4.1) keeps the update's
size independent of r; rsLoRA uses alpha / sqrt(r) so that large ranks still learn.

S2-LoRA (Sparsely Shared LoRA, Liu et al. 2025) shares one A and one B among all
adapted matrices of the same shape; each matrix keeps only λᵢ (r numbers), pushed
towards zero by an L1 penalty, so ranks no matrix uses can be pruned.

A layer wraps the base module from the outside (`layer.base`); whatever the base's
own forward does (openai-whisper's `Linear` casts its weight to the input dtype)
still happens. `enabled = False` makes the layer the frozen base model, which is
how a teacher or a reference model comes for free.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """Adapters of half-precision bases train in float32, as PEFT's autocast does."""
    if weight.dtype in (torch.float16, torch.bfloat16) or not weight.is_floating_point():
        return torch.float32
    return weight.dtype


def init_down_projection(a: torch.Tensor, init: str) -> None:
    if init == "kaiming":
        # the same as nn.Linear's own weight init, and PEFT's default
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    else:
        nn.init.normal_(a, std=1.0 / a.shape[0])


class LoRALayer(nn.Module):
    """What every adapter layer has: a base, a scale, dropout, the on/off switch, merging."""

    def __init__(self, base: nn.Linear, scale: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.scale = float(scale)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The base weight, so code that reads `layer.weight` (shapes, dtype) still works."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def lora_path(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """B diag(λ) A dropout(x), before scaling."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged or not self.enabled:
            return y
        # the scale rides on the add: one pass over the output instead of two
        return y.add(self.lora_path(x).to(y.dtype), alpha=self.scale)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            w = self.base.weight
            w.add_(self.delta_weight().to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            w = self.base.weight
            w.sub_(self.delta_weight().to(w.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, enabled={self.enabled}, merged={self.merged}"


class LoRALinear(LoRALayer):
    """Plain LoRA: ΔW = scale · B A with A (r × in), B (out × r) of its own."""

    def __init__(self, base: nn.Linear, rank: int, scale: float, dropout: float = 0.0,
                 init: str = "kaiming") -> None:
        super().__init__(base, scale, dropout)
        dtype, device = adapter_dtype(base.weight), base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=dtype, device=device))
        init_down_projection(self.lora_A, init)

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    def lora_path(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x.to(self.lora_A.dtype))
        return F.linear(F.linear(x, self.lora_A), self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scale


class SharedBasis(nn.Module):
    """The A and B that every S2-LoRA matrix of one shape (in, out) shares."""

    def __init__(self, in_features: int, out_features: int, rank: int, init: str,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype, device=device))
        init_down_projection(self.lora_A, init)

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]


class S2LoRALinear(LoRALayer):
    """S2-LoRA: ΔWᵢ = scale · B diag(λᵢ) A with A, B from a `SharedBasis`.

    λ starts at one, so with B = 0 the model starts at the base and every rank is
    in use; the L1 penalty on λ (`Adapters.l1_penalty`) then switches ranks off.
    """

    def __init__(self, base: nn.Linear, basis: SharedBasis, scale: float,
                 dropout: float = 0.0) -> None:
        super().__init__(base, scale, dropout)
        self.basis = basis
        self.lora_lambda = nn.Parameter(torch.ones(basis.rank, dtype=basis.lora_A.dtype,
                                                   device=basis.lora_A.device))

    @property
    def rank(self) -> int:
        return self.lora_lambda.shape[0]

    def lora_path(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x.to(self.basis.lora_A.dtype))
        return F.linear(F.linear(x, self.basis.lora_A) * self.lora_lambda, self.basis.lora_B)

    def delta_weight(self) -> torch.Tensor:
        return (self.basis.lora_B * self.lora_lambda) @ self.basis.lora_A * self.scale
