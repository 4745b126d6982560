r"""FFA-LoRA (Sun et al. 2024, "Improving LoRA in Privacy-preserving Federated Learning").

    x ─► dropout ─► A (r × in, frozen at its random init) ─► · scale ─► B (out × r, trained) ─► + W x

Federated Freeze-A LoRA. With both factors trained, averaging clients' adapters is
inexact (the mean of Bᵢ Aᵢ is not mean(Bᵢ) mean(Aᵢ)), and differentially private noise
on A is amplified through B (sec. 3). Freezing A at one shared random init and training
only the zero-initialised B makes the update linear in what trains, so FedAvg of the Bs
is exactly the average update and DP noise enters once (sec. 4); it also halves what a
client sends. A is a buffer: it is in the adapter file and in checkpoints (B means
nothing without it) but never in the optimizer (`Adapters.parameters`, `param_groups`).

ΔW = scale · B A is a plain LoRA update, so it exports to PEFT as A and B.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import LoRAConfig
from ..layers.kinds import LayerKind
from .lora import LoRA


class FFALoRA(LoRA):
    """LoRA with A a fixed buffer: same file keys, same maths, only B trains."""

    method = "ffa_lora"
    summary = 'A frozen at its random init, only B trains (FFA-LoRA, Sun et al. 2024).'

    def __init__(self, kind: LayerKind, config: LoRAConfig, dtype: torch.dtype,
                 device: torch.device, shared: nn.Module | None = None) -> None:
        super().__init__(kind, config, dtype, device, shared)
        a = self.lora_A.detach()
        del self.lora_A
        self.register_buffer("lora_A", a)
