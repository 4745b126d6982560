r"""Per-client DP-SGD for adapters: per-sample gradients, clipping, Gaussian noise, and ε.

DP-SGD (Abadi et al. 2016, Algorithm 1) at each step: the gradient gᵢ of every sample's
loss, each clipped to norm ≤ C (one norm over all trainable tensors together), summed,
plus Gaussian noise N(0, σ²C² I), divided by the expected batch size:

    g̃ = ( Σᵢ gᵢ · min(1, C / ‖gᵢ‖) + N(0, σ² C² I) ) / (q · n)

Why not Opacus's `PrivacyEngine`: it refuses lorakit's layers. Its hook-based per-sample
gradients know torch's own layers (a LoRA variant holds `lora_A`/`lora_B` as bare
parameters: "No activations detected for <class 'torch.nn.modules.linear.Linear'>") and it
refuses any trainable module that also holds buffers (FFA-LoRA's frozen A, LoRA-SB's
frozen A and B: "Model contains a trainable layer with buffers that Opacus doesn't
currently support"). So the per-sample gradients come from `torch.func`
(`vmap(grad(functional_call))`) over the trainable parameters only, which works for any
module; Opacus still provides the Poisson-sampling data loader (`DPDataLoader`) and the
privacy accountant (`RDPAccountant`, Mironov 2017; subsampled Gaussian, Mironov et al. 2019),
so ε is Opacus's number for the (σ, q, steps) actually used.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, grad, vmap


@dataclass
class DPConfig:
    """Per-client differential privacy (DP-SGD on the client's local steps)."""

    enabled: bool = field(default=False, metadata={"help": "train each client with DP-SGD"})
    noise_multiplier: float = field(
        default=1.0, metadata={"help": "σ: the noise std over the clipping bound C"})
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "C: each sample's gradient is clipped to this L2 norm"})
    delta: float = field(default=1e-5, metadata={"help": "δ of the reported (ε, δ)"})
    target_epsilon: float = field(
        default=0.0, metadata={"help": "> 0: solve σ so the whole run spends this ε "
                                       "(overrides noise_multiplier; federated: all "
                                       "rounds' local steps; fit: the trainer's steps)"})

    @classmethod
    def from_settings(cls, cfg: dict) -> DPConfig:
        """From a flat run config (`dp.enabled`, `dp.noise_multiplier`, ...)."""
        return cls(bool(cfg["dp.enabled"]), float(cfg["dp.noise_multiplier"]),
                   float(cfg["dp.max_grad_norm"]), float(cfg["dp.delta"]),
                   float(cfg["dp.target_epsilon"]))


def per_sample_gradients(module: nn.Module, loss: Callable, inputs: torch.Tensor,
                         targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """{name: (B, *shape)}: each sample's gradient of `loss(module(x), y)` for the trainable
    parameters of `module` (the frozen base is read, never differentiated)."""
    params = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    if len(inputs) == 0:       # Poisson sampling can draw an empty batch
        return {n: p.new_zeros((0, *p.shape)) for n, p in params.items()}

    def one(p, x, y):
        return loss(functional_call(module, p, (x[None],)), y[None])

    return vmap(grad(one), in_dims=(None, 0, 0), randomness="different")(params, inputs, targets)


def privatize(per_sample: dict[str, torch.Tensor], max_grad_norm: float,
              noise_multiplier: float, expected_batch_size: float,
              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Clip each sample's gradient to `max_grad_norm` (one norm over all tensors), sum, add
    N(0, (σC)²) per coordinate and divide by the expected batch size (Opacus's rule)."""
    first = next(iter(per_sample.values()))
    norms = torch.zeros(first.shape[0], dtype=first.dtype)
    for g in per_sample.values():
        norms = norms + g.flatten(1).pow(2).sum(1)
    factor = (max_grad_norm / (norms.sqrt() + 1e-6)).clamp(max=1.0)   # Opacus's 1e-6
    out = {}
    for name, g in per_sample.items():
        summed = torch.einsum("b,b...->...", factor, g)
        noise = torch.randn(summed.shape, generator=generator, dtype=summed.dtype)
        out[name] = (summed + noise_multiplier * max_grad_norm * noise) / expected_batch_size
    return out


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε after `steps` subsampled-Gaussian steps at rate q (Opacus's RDP accountant)."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    from opacus.accountants import RDPAccountant
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(target_epsilon: float, sample_rate: float, steps: int,
                      delta: float) -> float:
    """The σ that spends `target_epsilon` in `steps` steps at rate q (Opacus's search)."""
    from opacus.accountants.utils import get_noise_multiplier
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                      sample_rate=sample_rate, steps=steps, accountant="rdp"))


def solve_noise(dp: DPConfig, sample_rate: float, steps: int) -> float:
    """σ for a run of `steps` steps at rate q: solved so the run spends `dp.target_epsilon`
    when that is set (> 0), else `dp.noise_multiplier`."""
    if dp.target_epsilon > 0:
        return noise_for_epsilon(dp.target_epsilon, sample_rate, steps, dp.delta)
    return dp.noise_multiplier


def poisson_loader(loader, seed: int):
    """`loader`'s data in Poisson-sampled batches at q = batch_size / n (Opacus's
    DPDataLoader), the sampling the privacy accountant assumes, seeded."""
    from opacus.data_loader import DPDataLoader
    return DPDataLoader.from_data_loader(loader, generator=torch.Generator().manual_seed(seed))
