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

A federated client plans its whole run's σ once (`dp_plan`: Fed-SB's init steps and every
round's local steps at q = batch / n) and switches to DP-SGD each round (`make_private`);
the settings are `DPConfig` (config.py, run-config keys `dp.*`).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .config import DPConfig, FederatedConfig
from .errors import ClientError


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


def dp_plan(cfg: FederatedConfig, n: int, partition: int | None = None) -> tuple[float, float]:
    """(q, σ) of a client holding `n` examples: Poisson rate q = batch / n, and σ from
    `dp.noise_multiplier` or solved for `dp.target_epsilon` over the whole run (Fed-SB's
    init steps and every round's local steps)."""
    if n == 0:
        who = "a client" if partition is None else f"client {partition}"
        raise ClientError(f"federated: {who} holds no training examples, so DP-SGD has no "
                          "sampling rate; use fewer clients or a larger dirichlet alpha")
    q = min(1.0, cfg.batch_size / n)
    steps = cfg.init_steps + cfg.local_steps * cfg.rounds
    return q, solve_noise(cfg.dp, q, steps)


def make_private(module: nn.Module, loader, n: int, cfg: FederatedConfig, partition: int,
                 server_round: int):
    """Switch a client to DP-SGD for this round: Poisson sampling at q = batch / n (Opacus's
    DPDataLoader, what the accountant assumes), σ from `dp.noise_multiplier` or solved for
    `dp.target_epsilon` over the whole run, and ε spent after this round for δ, counting
    every round so far and Fed-SB's init steps (round 0; an upper bound when a client sat
    out a round).
    The noise and sampling generators are seeded from (seed, partition, round): independent
    draws per client and round, reproducible runs; keep the seed secret when the noise must
    also hide the data from someone who knows the run's settings."""
    q, sigma = dp_plan(cfg, n, partition)
    steps_so_far = cfg.init_steps + cfg.local_steps * server_round
    seed = (cfg.seed * 1_000_003 + partition) * 10_007 + server_round
    module.noise_multiplier, module.expected_batch = sigma, q * n
    module.noise_generator = torch.Generator().manual_seed(seed)
    loader = poisson_loader(loader, seed + 1)
    return loader, {"epsilon": epsilon(sigma, q, steps_so_far, module.dp.delta),
                    "noise-multiplier": sigma}
