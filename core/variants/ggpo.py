r"""LoRA-GGPO (Chang, Guo, Chang & Wu 2025, "LoRA-GGPO: Mitigating Double Descent in
LoRA Fine-Tuning via Gradient-Guided Perturbation Optimization"): LoRA trained at a
randomly perturbed weight whose size per output row comes from the weight's and the
gradient's norms.

    pass 1   loss(W + ΔW)             → ∇A, ∇B at the clean weights
    perturb  ε (out × in), row i:  ε_i ~ N(0, s_i²),
             s_i = (σ ‖(W + ΔW)_i‖ + β ‖G_i‖²) / sqrt(out),   G = scale·(B ∇A + ∇B A)
    pass 2   loss(W + ΔW + ε)         → ∇A, ∇B at the perturbed weights: the update
    restore  ε dropped; the optimizer steps with pass 2's gradients

Like SAM, the step's gradient is taken at a perturbed point, so training prefers flat
minima and the double descent of LoRA's training loss is damped (the paper's aim). A
step costs two forward/backward passes, as SAM's does; the perturbation itself needs
no global gradient norm over every parameter, only per-row norms of each adapted
matrix (weight and gradient, the paper's "gradient and weight norms") and noise. G is
the change one gradient step on A and B makes to ΔW (up to the learning rate): the
gradient the full weight would see projected onto what LoRA can move. σ and β are
`LoRAConfig.ggpo_sigma` and `ggpo_beta` (0.03 and 0.01 by default, the values the
documentation of kohya-ss sd-scripts' LoRA-GGPO gives; the 1/sqrt(out) normalisation
and G are that implementation's too).

ε is applied as an extra term of this module's forward, `x εᵀ` in the layer kind's own
sense (so every kind works and restoring is exact: the base weight is never written).
The second pass is run by `AdapterModule.optimizer_step` (automatic optimization) or by
hand with `with adapters.perturbed(): loss(...).backward()`. At inference a GGPO adapter
is a plain LoRA adapter: merge, `adapter merge` and PEFT export need nothing more.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import LoRAConfig
from ..kinds import LayerKind
from .lora import LoRA


class GGPO(LoRA):
    method = "ggpo"
    perturbs = True

    def __init__(self, kind: LayerKind, config: LoRAConfig, dtype: torch.dtype,
                 device: torch.device, shared: nn.Module | None = None) -> None:
        super().__init__(kind, config, dtype, device, shared)
        self.sigma, self.beta = float(config.ggpo_sigma), float(config.ggpo_beta)
        self.perturbation: torch.Tensor | None = None    # ε (out × in), never saved

    def perturbation_std(self, weight: torch.Tensor, kind: LayerKind) -> torch.Tensor | None:
        """s (out,): each output row's noise scale, from the current gradients; None before
        a backward pass has given A and B gradients."""
        a, b = self.lora_A, self.lora_B
        if a.grad is None or b.grad is None:
            return None
        a, b, ga, gb = a.detach(), b.detach(), a.grad, b.grad    # float32 or float64
        adapted = kind.to_matrix(weight).to(a.dtype) + self.scale * (b @ a)
        grad = self.scale * (b @ ga + gb @ a)
        s = self.sigma * adapted.norm(dim=1) + self.beta * grad.norm(dim=1).square()
        return s / math.sqrt(adapted.shape[0])

    @torch.no_grad()
    def perturb(self, weight: torch.Tensor, kind: LayerKind) -> bool:
        std = self.perturbation_std(weight, kind)
        if std is None:
            return False
        noise = torch.randn(kind.out_features, kind.in_features, device=std.device)
        self.perturbation = (noise * std[:, None]).to(self.lora_A.dtype)
        return True

    def restore(self) -> None:
        self.perturbation = None

    def forward(self, x: torch.Tensor, kind: LayerKind, base: nn.Module) -> torch.Tensor:
        y = super().forward(x, kind, base)
        if self.perturbation is None:
            return y
        if kind.float_input:
            x = x.to(self.perturbation.dtype)
        return y + kind.down(x, self.perturbation)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, sigma={self.sigma:g}, beta={self.beta:g}, "
                f"perturbed={self.perturbation is not None}")
