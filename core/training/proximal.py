r"""Proximal steps for L1 penalties under Adam: exact zeros where a loss term cannot make them.

A penalty l1·Σ|λ| added to the loss leaves λ jittering around zero under Adam: Adam divides
every gradient by its running scale, the penalty's l1·sign(λ) included, so λ never lands on
zero. The proximal step handles the penalty outside the gradient instead: after the
optimizer step, each λ moves towards zero by a threshold and stops there (soft-thresholding).
In Adam's own metric (step size lr / (√v̂ + ε) per entry) the threshold of the L1 term is

    τ = lr · l1 / (√v̂ + ε)        (v̂: Adam's bias-corrected second moment of that entry)

so an entry whose gradient is small against its value is switched off first — the
sensitivity |λ·∂L/∂λ| that AdaLoRA prunes by. Entries Adam has not seen a gradient for
yet (S2-LoRA's λ in the first step, when B is still zero) are left alone.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def adam_thresholds(optimizer: torch.optim.Optimizer, l1: float) -> Callable[[torch.Tensor], torch.Tensor | float]:
    """param -> its per-entry proximal threshold of `l1`·Σ|param| after `optimizer`'s last
    step. Adam and AdamW: in Adam's metric, as above; any other optimizer (SGD): lr·l1,
    the plain proximal-gradient (ISTA) step. A param the optimizer does not hold, or that
    had no gradient yet: 0."""
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    adam = isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW)

    def threshold(p: torch.Tensor) -> torch.Tensor | float:
        g = groups.get(id(p))
        state = optimizer.state.get(p, {})
        if g is None:
            return 0.0
        if not adam:
            return g["lr"] * l1
        if "exp_avg_sq" not in state:
            return 0.0
        step = float(state["step"])
        beta2 = g["betas"][1]
        scale = (state["exp_avg_sq"] / (1 - beta2 ** step)).sqrt() + g["eps"]
        seen = state["exp_avg_sq"] > 0
        return torch.where(seen, g["lr"] * l1 / scale, torch.zeros_like(scale))
    return threshold
