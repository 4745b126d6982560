"""Pretrain the embedded tiny DUSt3R on generic synthetic scenes.

    python -m lorakit.plugins.lora3d.pretrain --out plugins/lora3d/tiny_dust3r.pth \
        --minutes 100 --threads 1

Pairs of views of random rooms (textures 'checker', 'stripes', 'waves', 'gradient';
never 'cells', never degraded) supervise DUSt3R's confidence-aware regression loss with
ground-truth pointmaps in the first camera's frame. Rendering costs about as much as a
training step on one core, so a pool of rendered pairs is refreshed a few pairs per step
and batches are drawn from it (with random view-order swaps and horizontal flips).
The checkpoint (upstream format) is written every `--save-every` steps, so a run that is
stopped still leaves a usable model.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from lorakit.domains.geometry.scenes import HELD_OUT_SEEDS, random_pair
from lorakit.plugins.lora3d.loss import confidence_loss, pair_targets
from lorakit.plugins.lora3d.model import TINY_ARGS, build_model, count_parameters, save_checkpoint


def to_input(images: torch.Tensor) -> torch.Tensor:
    """(B,H,W,3) in [0,1] to DUSt3R's normalised (B,3,H,W) in [-1,1]."""
    return images.permute(0, 3, 1, 2) * 2 - 1


def views(img: torch.Tensor, ids: list[int]) -> dict:
    b = img.shape[0]
    return {"img": img, "true_shape": torch.tensor([list(img.shape[-2:])] * b),
            "idx": list(ids), "instance": [str(i) for i in ids]}


def render_item(seed: int, size: int) -> dict:
    v = random_pair(seed, size)
    return {"img": v.images, "pts3d": v.pts3d, "valid": v.valid, "pose": v.poses}


def make_batch(pool: list[dict], batch: int, rng: random.Random) -> dict:
    items = rng.sample(pool, batch)
    img1, img2, p1, p2, m1, m2, pose1 = [], [], [], [], [], [], []
    for it in items:
        a, b = (0, 1) if rng.random() < 0.5 else (1, 0)
        i1, i2 = it["img"][a], it["img"][b]
        x1, x2 = it["pts3d"][a], it["pts3d"][b]
        v1, v2 = it["valid"][a], it["valid"][b]
        pose = it["pose"][a].clone()
        if rng.random() < 0.5:    # horizontal flip: mirror the images and the x axis
            i1, i2 = i1.flip(1), i2.flip(1)
            x1, x2, v1, v2 = x1.flip(1), x2.flip(1), v1.flip(1), v2.flip(1)
            pose[:3, 0] = -pose[:3, 0]   # a mirrored camera: x axis negated
        img1.append(i1), img2.append(i2), p1.append(x1), p2.append(x2)
        m1.append(v1), m2.append(v2), pose1.append(pose)
    return {"img1": torch.stack(img1), "img2": torch.stack(img2), "pts1": torch.stack(p1),
            "pts2": torch.stack(p2), "valid1": torch.stack(m1), "valid2": torch.stack(m2),
            "pose1": torch.stack(pose1)}


def train_step(model, batch: dict, alpha: float = 0.2):
    n = batch["img1"].shape[0]
    r1, r2 = model(views(to_input(batch["img1"]), range(n)),
                   views(to_input(batch["img2"]), range(n, 2 * n)))
    gt1, gt2 = pair_targets(batch["pts1"], batch["pts2"], batch["pose1"])
    return confidence_loss([r1["pts3d"], r2["pts3d_in_other_view"]], [r1["conf"], r2["conf"]],
                           [gt1, gt2], [batch["valid1"], batch["valid2"]], alpha)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="plugins/lora3d/tiny_dust3r.pth")
    ap.add_argument("--minutes", type=float, default=100.0, help="wall-clock budget")
    ap.add_argument("--steps", type=int, default=100_000, help="step budget")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--pool", type=int, default=1500)
    ap.add_argument("--initial-pool", type=int, default=200)
    ap.add_argument("--new-per-step", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--init", default=None,
                    help="continue from this checkpoint (its weights; the optimiser restarts)")
    ap.add_argument("--warmup", type=int, default=300)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model = build_model(TINY_ARGS)
    history = []
    if args.init:
        from lorakit.plugins.lora3d.model import read_checkpoint
        _, state = read_checkpoint(args.init)
        model.load_state_dict(state)
        with torch.serialization.safe_globals([argparse.Namespace]):
            prev = torch.load(args.init, map_location="cpu", weights_only=True)
        info = prev.get("pretrain", {})
        history = list(info.get("history", []))
        if not history and "command" in info:     # a checkpoint of the first recipe version
            history = [{"command": info["command"], "steps": info.get("step", 0),
                        "regr_ema": info.get("regr_ema")}]
        print(f"continuing from {args.init}", flush=True)
    command = " ".join(["python -m lorakit.plugins.lora3d.pretrain"] + list(argv or []))
    model.train()
    print(f"tiny DUSt3R: {count_parameters(model):,} parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05,
                            betas=(0.9, 0.95))
    out = Path(args.out)
    log_path = out.with_suffix(".log.jsonl")
    next_seed = HELD_OUT_SEEDS + args.seed * 10_000_000 + sum(h.get("steps", 0) for h in history) * 8
    t0 = time.time()
    pool = []
    for _ in range(args.initial_pool):
        pool.append(render_item(next_seed, args.size))
        next_seed += 1
    print(f"initial pool of {len(pool)} pairs in {time.time() - t0:.0f}s", flush=True)
    budget = args.minutes * 60
    warmup = max(1, args.warmup)
    step, ema = 0, None
    # the schedule is cosine over the expected number of steps; re-estimated as we go
    expected = args.steps
    with log_path.open("a") as log:
        while step < args.steps and time.time() - t0 < budget:
            for _ in range(args.new_per_step):
                item = render_item(next_seed, args.size)
                next_seed += 1
                if len(pool) < args.pool:
                    pool.append(item)
                else:
                    pool[rng.randrange(len(pool))] = item
            elapsed = time.time() - t0
            if step >= 50:
                expected = min(args.steps, int(step * budget / max(elapsed, 1e-6)))
            progress = min(step / max(expected, 1), 1.0)
            lr = args.lr * min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (
                1 + math.cos(math.pi * progress)))
            for group in opt.param_groups:
                group["lr"] = lr
            batch = make_batch(pool, min(args.batch, len(pool)), rng)
            loss, parts = train_step(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            regr = float(parts["regr"])
            ema = regr if ema is None else 0.98 * ema + 0.02 * regr
            if step % 25 == 0:
                rec = {"step": step, "loss": float(loss), "regr": regr, "regr_ema": ema,
                       "conf": float(parts["conf"]), "lr": lr, "t": time.time() - t0,
                       "pairs_seen": next_seed - HELD_OUT_SEEDS}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                if step % 100 == 0:
                    print(json.dumps(rec), flush=True)
            if step % args.save_every == 0:
                save_checkpoint(model, TINY_ARGS, out, {"pretrain": {"history": history + [{
                    "command": command, "steps": step, "regr_ema": ema}]}})
    save_checkpoint(model, TINY_ARGS, out, {"pretrain": {"history": history + [{
        "command": command, "steps": step, "regr_ema": ema}]}})
    print(f"done: {step} steps in {time.time() - t0:.0f}s -> {out}", flush=True)


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
