r"""LoRA-GGPO (Chang, Guo, Chang & Wu 2025, "LoRA-GGPO: Mitigating Double Descent in
LoRA Fine-Tuning via Gradient-Guided Perturbation Optimization"): LoRA trained at a
randomly perturbed weight whose size per output row comes from the weight's and the
gradient's norms.

    pass 1   loss(W + ΔW)             → ∇A, ∇B at the clean weights
    perturb  ε (out × in), row i:  ε_i ~ N(0, s_i²),
             s_i = (σ ‖(W + ΔW)_i‖ + β ‖G_i‖²) / sqrt(out),   G = scale·(B ∇A + ∇B A)
    pass 2   loss(W + ΔW + ε)         → ∇A, ∇B at the perturbed weights: the update
    restore  ε dropped; the optimizer steps with pass 2's gradients

Sources: the paper's own code (github.com/llm172/LoRA-GGPO) is not available here and
its method section could not be read (only the abstract: perturbations "from gradient and
weight norms" towards flatter minima). What was checked is kohya-ss sd-scripts' LoRA-GGPO
port (`networks/lora_flux.py`, `LoRAModule.update_norms`, `update_grad_norms` and the
perturbation in `forward`), the source of σ and β's defaults (0.03 and 0.01,
`LoRAConfig.ggpo_sigma`, `ggpo_beta`). Against it:

- same: ε is Gaussian with row i's standard deviation (σ·n_i + β‖G_i‖²)/sqrt(out),
  G = scale·(B ∇A + ∇B A), applied as `x εᵀ` beside the adapter's output;
- the weight term: the port uses n_i = sqrt(m² + ‖(B A)_i‖²), m the mean row norm of W
  over a sample of rows (an estimate; its scale factor on B A is dropped, `mul` not
  in place); here n_i = ‖(W + ΔW)_i‖, the row norm that estimate stands for;
- passes: the port runs ONE forward/backward per step, with ε drawn from the norms of
  the previous step's gradients (cached after backward); here a step is two passes, a
  clean one for the gradients and a perturbed one whose gradients the optimizer uses,
  as SAM does. Which of the two the paper does is unverified.

The step's gradient is taken at a perturbed point, so training prefers flat minima and
the double descent of LoRA's training loss is damped (the paper's aim). A step costs two
forward/backward passes; the perturbation needs no global gradient norm over every
parameter, only per-row norms of each adapted matrix and noise. G is the change one
gradient step on A and B makes to ΔW (up to the learning rate): the gradient the full
weight would see projected onto what LoRA can move.

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
from ..layers.kinds import LayerKind
from .lora import LoRA


class GGPO(LoRA):
    method = "ggpo"
    summary = ('LoRA trained at weights perturbed by noise sized from weight and gradient norms '
               '(LoRA-GGPO, Chang et al. 2025).')
    perturbs = True

    def __init__(self, kind: LayerKind, config: LoRAConfig, dtype: torch.dtype,
                 device: torch.device, shared: nn.Module | None = None) -> None:
        super().__init__(kind, config, dtype, device, shared)
        self.sigma, self.beta = float(config.ggpo.sigma), float(config.ggpo.beta)
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
