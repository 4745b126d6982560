r"""LoRA (Hu et al. 2021): ΔW = scale · B A with A (r × in), B (out × r) of the module's own.

    x ─► dropout ─► A (r × in) ─► · scale ─► B (out × r) ─► + W x

A weight update of a pretrained model has a low "intrinsic rank" (ibid., sec. 4 and
7), so r ≪ min(in, out) loses little. B starts at zero, so the adapted model starts
exactly at the base; scale = alpha / r (sec. 4.1) keeps the update's size independent
of r, and rsLoRA's alpha / sqrt(r) lets large ranks still learn.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import LoRAConfig
from ..layers.kinds import LayerKind
from .base import Variant, init_down_projection


class LoRA(Variant):
    method = "lora"
    summary = 'one A, B per matrix (Hu et al. 2021).'

    def __init__(self, kind: LayerKind, config: LoRAConfig, dtype: torch.dtype,
                 device: torch.device, shared: nn.Module | None = None) -> None:
        super().__init__(kind, config, dtype, device, shared)
        self.lora_A = nn.Parameter(torch.empty(config.rank, kind.in_features, dtype=dtype,
                                               device=device))
        self.lora_B = nn.Parameter(torch.zeros(kind.out_features, config.rank, dtype=dtype,
                                               device=device))
        init_down_projection(self.lora_A, config.init)

    def factors(self):
        return self.lora_A, self.lora_B

    @classmethod
    def file_keys(cls, path, kind, weight_shape):
        return [f"{path}.lora_A", f"{path}.lora_B"]

    @classmethod
    def file_factors(cls, tensors, path, kind, weight_shape):
        return tensors[f"{path}.lora_A"], tensors[f"{path}.lora_B"]
