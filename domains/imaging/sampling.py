"""Deterministic DDIM sampling (Song et al. 2021, eta = 0) around any ε-function.

`ddim_sample(eps_fn, noise, scheduler, steps)` runs diffusers' `DDIMScheduler`
on a fresh copy of the given scheduler's config, so samplers never share state;
the same noise and the same ε-function give the same images.

With ``clip_sample`` the predicted x_0 is clipped to [-1, 1] and ε is re-derived from
the clipped x_0 (``use_clipped_model_output=True``), so each step stays a consistent
DDIM update. Without it, the step mixes a clipped x_0 with the raw ε; at high noise
(where ᾱ_t ≈ 0 magnifies every error in x_0) and with guidance w = 3, that breaks the
digits teacher's samples (class accuracy 41% instead of 100% on 100 samples).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def load_scheduler(folder, fallback: dict | None = None):
    """The DDIM scheduler of a model folder: its scheduler_config.json, or the pipeline's."""
    from diffusers import DDIMScheduler

    folder = Path(folder)
    for candidate in (folder / "scheduler_config.json",
                      folder / "scheduler" / "scheduler_config.json",
                      folder.parent / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            config = json.loads(candidate.read_text())
            config.pop("_class_name", None)
            return DDIMScheduler.from_config(config)
    if fallback is None:
        return None
    return DDIMScheduler(**fallback)


def fresh(scheduler):
    return type(scheduler).from_config(scheduler.config)


@torch.no_grad()
def ddim_sample(eps_fn: EpsFn, noise: torch.Tensor, scheduler, steps: int = 25,
                clip: bool = True) -> torch.Tensor:
    """x_T = noise -> x_0 in `steps` DDIM steps; one `eps_fn` call per step."""
    sched = fresh(scheduler)
    sched.set_timesteps(steps, device=noise.device)
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = eps_fn(x, t)
        x = sched.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    return x.clamp(-1, 1) if clip else x


def add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0) = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε."""
    a = scheduler.alphas_cumprod.to(device=x0.device, dtype=torch.float32)[t]
    a = a.view(-1, *([1] * (x0.dim() - 1)))
    return (a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()).to(x0.dtype)
