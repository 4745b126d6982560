"""Recipe of the embedded teacher: a tiny class-conditional diffusers UNet on the digits.

The shipped checkpoint `domains/imaging/digits_teacher/` was made with exactly::

    OMP_NUM_THREADS=1 python -m lorakit.domains.imaging.teacher \
        --out domains/imaging/digits_teacher --steps 6000 --seed 0 --threads 1

(0.2-0.8 s per step on one CPU thread: the shipped checkpoint took 76 minutes on a
shared two-core machine; deterministic for a given torch build and thread count).

The model is a plain `diffusers.UNet2DConditionModel` (16x16x1, block_out_channels
(16, 32, 32), two ResNet layers per block, self-attention at 8x8 and 4x4, about 0.41 M
parameters). Class conditioning uses diffusers' own class embedding: the config sets
``num_class_embeds=11`` (``class_embed_type=None``), so the model is called as::

    unet(x_t, t, encoder_hidden_states=None, class_labels=y).sample

and the class embedding is added to the timestep embedding (as in diffusers'
class-conditional UNets). Label 10 is the *null class*: 12% of training labels are
replaced by it (label dropout), so the same network gives the unconditional
prediction ε_u = unet(x_t, t, class_labels=10) that classifier-free guidance needs:
ε = ε_u + w (ε_c - ε_u). There are no cross-attention blocks, so
``encoder_hidden_states`` is unused (pass None).

The folder is what `save_pretrained` writes (``config.json`` and
``diffusion_pytorch_model.safetensors``) plus the DDIM scheduler config
(``scheduler_config.json``, cosine "squaredcos_cap_v2" betas, 1000 steps, ε-prediction),
so ``UNet2DConditionModel.from_pretrained(dir)`` and ``DDIMScheduler.from_pretrained(dir)``
both load it. Weights are the exponential moving average (decay 0.999) of training.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .digits import NUM_CLASSES, SIZE, load_digits

NULL_CLASS = NUM_CLASSES  # label 10: "no class", for classifier-free guidance
LABEL_DROPOUT = 0.12
DEFAULT_DIR = Path(__file__).with_name("digits_teacher")

SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                    "prediction_type": "epsilon", "clip_sample": True, "clip_sample_range": 1.0,
                    "set_alpha_to_one": False, "steps_offset": 0, "timestep_spacing": "leading"}


def unet_config(sample_size: int = SIZE, block_out_channels=(16, 32, 32),
                layers_per_block: int = 2, num_class_embeds: int | None = NUM_CLASSES + 1,
                time_cond_proj_dim: int | None = None, in_channels: int = 1) -> dict:
    """Config of the digits teacher (and of test-sized variants of it)."""
    n = len(block_out_channels)
    down = ("DownBlock2D",) + ("AttnDownBlock2D",) * (n - 1)
    up = ("AttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    return dict(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
                block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2D",
                num_class_embeds=num_class_embeds, attention_head_dim=8,
                norm_num_groups=min(8, block_out_channels[0]), cross_attention_dim=32,
                time_cond_proj_dim=time_cond_proj_dim)


def build_unet(**overrides):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(**overrides))


def scheduler(kind: str = "ddim"):
    from diffusers import DDIMScheduler, DDPMScheduler

    cls = DDIMScheduler if kind == "ddim" else DDPMScheduler
    cfg = dict(SCHEDULER_CONFIG)
    if kind != "ddim":
        for k in ("set_alpha_to_one", "steps_offset"):
            cfg.pop(k)
    return cls(**cfg)


def lr_at(step: int, steps: int, lr: float, warmup: int = 200) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def save(unet, out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out, safe_serialization=True)
    scheduler("ddim").save_config(out)
    (out / "training.json").write_text(json.dumps(meta, indent=2))


def train(out: Path = DEFAULT_DIR, steps: int = 6000, batch_size: int = 64, lr: float = 2e-3,
          seed: int = 0, ema_decay: float = 0.999, save_every: int = 1000,
          log_every: int = 100) -> Path:
    torch.manual_seed(seed)
    data = load_digits("all")
    unet = build_unet()
    ema = copy.deepcopy(unet).requires_grad_(False)
    sched = scheduler("ddpm")
    alphas = sched.alphas_cumprod
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    n = len(data)
    t0 = time.time()
    meta = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
            "ema_decay": ema_decay, "label_dropout": LABEL_DROPOUT, "null_class": NULL_CLASS,
            "params": sum(p.numel() for p in unet.parameters()), "losses": []}
    running = 0.0
    for step in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        x0, y = data.images[idx], data.labels[idx].clone()
        y[torch.rand(batch_size, generator=gen) < LABEL_DROPOUT] = NULL_CLASS
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr)
        pred = unet(xt, t, encoder_hidden_states=None, class_labels=y).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(ema_decay, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - d)
        running += loss.item()
        if (step + 1) % log_every == 0:
            meta["losses"].append([step + 1, running / log_every])
            print(f"step {step + 1}/{steps} loss {running / log_every:.4f} "
                  f"({time.time() - t0:.0f}s)", flush=True)
            running = 0.0
        if (step + 1) % save_every == 0 or step + 1 == steps:
            meta["done_steps"] = step + 1
            meta["seconds"] = round(time.time() - t0, 1)
            save(ema, out, meta)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_DIR)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train(args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)


if __name__ == "__main__":
    main()
