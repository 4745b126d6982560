r"""ALLoRA (Huang & Balestriero 2024, "ALLoRA: Adaptive Learning Rate Mitigates LoRA
Fatal Flaws"): LoRA without dropout and without the alpha / r scale, trained with a
per-row adaptive learning rate.

    x ─► A (r × in) ─► B (out × r) ─► + W x            ΔW = B A   (scale 1, no dropout)

    before each optimizer step, for every row θ of A and of B:
        ∇θ ← ∇θ / sqrt(‖θ‖² + 1/η²)

The paper finds three flaws of LoRA in short fine-tuning runs: dropout regularises only
over long runs, B's start at zero makes the first steps slow, and the alpha/r scale
couples the modules of different layers badly. It removes dropout and the scale, and
instead scales each parameter row's gradient by a coefficient inversely proportional
to the row's ℓ2 norm (its abstract): a row near zero (B at init)
moves with η times the optimizer's step, a large row slowly. η is the method's one
hyper-parameter (`LoRAConfig.allora_eta`).

Sources: no code of the authors was found, and the paper's method section could not be
read here; only its abstract (arXiv 2410.09692): "scaling the per sample and per parameter
gradients with a coefficient inversely proportional to parameters' ℓ2 norm", dropout-free
and scaling-free. So the exact coefficient 1/sqrt(‖θ‖² + 1/η²), that θ is a row (not a
column or the whole matrix), that the batch gradient rather than each sample's is scaled,
and η = 1 by default are this implementation's choices, unverified against the paper.

The scaling is a gradient hook, not an optimizer: `before_optimizer_step` rewrites
`.grad` in place, so it works with any torch optimizer, with Lightning (AdapterModule
calls it from `on_before_optimizer_step`, after AMP unscaling and gradient
accumulation) and with a hand-written loop (`adapters.before_optimizer_step()` between
`backward()` and `step()`). At inference an ALLoRA adapter is a plain LoRA adapter of
scale 1: merge, `adapter merge` and PEFT export (lora_alpha = r) need nothing more.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import LoRAConfig
from ..errors import LoraKitError
from ..layers.kinds import LayerKind
from .lora import LoRA


class ALLoRA(LoRA):
    method = "allora"
    summary = ("LoRA without dropout or alpha/r, each factor row's gradient scaled by "
               '1/sqrt(|row|^2 + 1/eta^2) (ALLoRA, Huang & Balestriero 2024).')

    def __init__(self, kind: LayerKind, config: LoRAConfig, dtype: torch.dtype,
                 device: torch.device, shared: nn.Module | None = None) -> None:
        if config.dropout > 0:
            raise LoraKitError(f"method 'allora' is dropout-free (ALLoRA's first point); got "
                               f"dropout={config.dropout}: set dropout to 0")
        super().__init__(kind, config, dtype, device, shared)
        self.inv_eta_sq = 1.0 / config.allora.eta ** 2

    @classmethod
    def scale_for(cls, config: LoRAConfig) -> float:
        """Scale-free: alpha and rslora are ignored (ALLoRA's third point)."""
        return 1.0

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        for p in (self.lora_A, self.lora_B):
            if p.grad is None:
                continue
            row_sq = p.detach().float().square().sum(dim=1, keepdim=True)
            p.grad.mul_(torch.rsqrt(row_sq + self.inv_eta_sq).to(p.grad.dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eta={self.inv_eta_sq ** -0.5:g}"
