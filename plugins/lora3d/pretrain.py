"""Pretrain the embedded tiny DUSt3R on synthetic multi-view scenes.

    python -m lorakit.plugins.lora3d.pretrain --out plugins/lora3d/assets/tiny_dust3r.pth \
        --minutes 90 --threads 1 --init-encoder OLD.pth

Every step renders one fresh scene of 4-8 views (`random_scene_views`: rooms, and
floating primitives at random scale and roll that carry no single-image depth cue;
aperiodic 'noise', 'marble' and 'cells' textures) into a pool of recent scenes, and a
batch takes one pair of views from each of `--batch` pool scenes, with an angle of at
most `--max-angle` degrees between the two cameras (random view order). Two losses:
DUSt3R's confidence-aware regression on ground-truth pointmaps in the first camera's
frame, and (weight `--match`) a correspondence loss that teaches one head of every
decoder cross-attention to attend to the patch of the other view that sees the same
point (the renderer gives the correspondences). The checkpoint (upstream format) is
written every `--save-every` steps, so a stopped run still leaves a usable model.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import time
from pathlib import Path

import torch

from lorakit.domains.geometry.dust3r import (
    TINY_ARGS,
    build_model,
    count_parameters,
    read_checkpoint,
    save_checkpoint,
)
from lorakit.domains.geometry.scenes import HELD_OUT_SEEDS, random_scene_views, view_angle_deg
from lorakit.plugins.lora3d.inference import model_view, to_input
from lorakit.plugins.lora3d.loss import (
    CrossAttentionProbe,
    confidence_loss,
    correspondence_loss,
    pair_targets,
    patch_correspondences,
)


def scene_pairs(views, max_angle: float) -> list[tuple[int, int]]:
    """Ordered pairs of distinct views of one scene at most `max_angle` degrees apart."""
    n = views.images.shape[0]
    return [(i, j) for i in range(n) for j in range(n)
            if i != j and view_angle_deg(views.poses[i], views.poses[j]) <= max_angle]


def scene_item(seed: int, size: int, float_fraction: float, max_angle: float,
               patch: int) -> dict | None:
    """One rendered pretraining scene with its pairs and their patch correspondences
    (None when no two views are within `max_angle`)."""
    v = random_scene_views(seed, size, float_fraction=float_fraction)
    pairs = scene_pairs(v, max_angle)
    if not pairs:
        return None
    match = torch.stack([torch.stack([
        patch_correspondences(v.pts3d[i], v.valid[i], v.K[j], v.poses[j], v.depth[j], patch),
        patch_correspondences(v.pts3d[j], v.valid[j], v.K[i], v.poses[i], v.depth[i], patch)])
        for i, j in pairs])
    return {"images": v.images, "pts3d": v.pts3d, "valid": v.valid, "poses": v.poses,
            "pairs": torch.tensor(pairs), "match": match}


class SceneStream(torch.utils.data.IterableDataset):
    """Scenes of consecutive seeds from `first_seed`; with DataLoader workers, worker k of
    N renders seeds first_seed + k, + k + N, ... (so they never repeat)."""

    def __init__(self, first_seed: int, **item_kwargs) -> None:
        self.first_seed, self.item_kwargs = first_seed, item_kwargs

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        k, n = (0, 1) if info is None else (info.id, info.num_workers)
        seed = self.first_seed + k
        while True:
            torch.set_num_threads(1)
            item = scene_item(seed, **self.item_kwargs)
            if item is not None:
                item["seed"] = seed
                yield item
            seed += n


def make_batch(pool: list[dict], batch: int, rng: random.Random) -> dict:
    """One pair from each of `batch` pool scenes: images, pointmaps, masks, the first
    camera's pose and the patch correspondences both ways."""
    keys = ("img1", "img2", "pts1", "pts2", "valid1", "valid2", "pose1", "match12", "match21")
    out = {k: [] for k in keys}
    for item in rng.sample(pool, batch):
        p = rng.randrange(len(item["pairs"]))
        i, j = item["pairs"][p].tolist()
        out["img1"].append(item["images"][i]), out["img2"].append(item["images"][j])
        out["pts1"].append(item["pts3d"][i]), out["pts2"].append(item["pts3d"][j])
        out["valid1"].append(item["valid"][i]), out["valid2"].append(item["valid"][j])
        out["pose1"].append(item["poses"][i])
        out["match12"].append(item["match"][p, 0]), out["match21"].append(item["match"][p, 1])
    return {k: torch.stack(v) for k, v in out.items()}


def train_step(model, batch: dict, alpha: float = 0.2, match: float = 0.0):
    """The loss and its parts ('regr', 'conf', and 'match' when `match` > 0)."""
    n = batch["img1"].shape[0]
    probe = CrossAttentionProbe(model)
    with probe if match else contextlib.nullcontext():
        r1, r2 = model(model_view(to_input(batch["img1"]), range(n)),
                       model_view(to_input(batch["img2"]), range(n, 2 * n)))
    gt1, gt2 = pair_targets(batch["pts1"], batch["pts2"], batch["pose1"])
    loss, parts = confidence_loss([r1["pts3d"], r2["pts3d_in_other_view"]],
                                  [r1["conf"], r2["conf"]], [gt1, gt2],
                                  [batch["valid1"], batch["valid2"]], alpha)
    if match:
        m = correspondence_loss(probe, batch["match12"], batch["match21"])
        parts["match"] = m.detach()
        loss = loss + match * m
    return loss, parts


def init_encoder(model, path) -> int:
    """Copy the patch embedding and encoder of another checkpoint (same shapes only);
    returns how many tensors were copied."""
    _, state = read_checkpoint(path)
    own = model.state_dict()
    take = {k: v for k, v in state.items() if k.startswith(("patch_embed", "enc_blocks",
                                                             "enc_norm"))
            and k in own and own[k].shape == v.shape}
    model.load_state_dict(take, strict=False)
    return len(take)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="plugins/lora3d/assets/tiny_dust3r.pth")
    ap.add_argument("--minutes", type=float, default=90.0, help="wall-clock budget")
    ap.add_argument("--steps", type=int, default=100_000, help="step budget")
    ap.add_argument("--batch", type=int, default=8, help="pairs per step (one per scene)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--pool", type=int, default=256, help="recent scenes kept for batches")
    ap.add_argument("--initial-pool", type=int, default=32)
    ap.add_argument("--max-angle", type=float, default=80.0,
                    help="largest angle between the two cameras of a pair (degrees)")
    ap.add_argument("--float-fraction", type=float, default=0.5,
                    help="share of scenes of floating primitives (no single-view depth cue)")
    ap.add_argument("--match", type=float, default=0.1,
                    help="weight of the cross-attention correspondence loss (0: off)")
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--init", default=None,
                    help="continue from this checkpoint (its weights; the optimiser restarts)")
    ap.add_argument("--init-encoder", default=None,
                    help="start the encoder from this checkpoint's (tensors of equal shape)")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--new-per-step", type=int, default=1, help="fresh scenes per step")
    ap.add_argument("--workers", type=int, default=0,
                    help="processes rendering scenes (0: render between steps)")
    ap.add_argument("--device", default="cpu", help="torch device to train on")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model = build_model(TINY_ARGS)
    history = []
    if args.init:
        _, state = read_checkpoint(args.init)
        model.load_state_dict(state)
        with torch.serialization.safe_globals([argparse.Namespace]):
            prev = torch.load(args.init, map_location="cpu", weights_only=True)
        history = list(prev.get("pretrain", {}).get("history", []))
        print(f"continuing from {args.init}", flush=True)
    elif args.init_encoder:
        print(f"encoder from {args.init_encoder}: {init_encoder(model, args.init_encoder)} "
              "tensors", flush=True)
    command = " ".join(["python -m lorakit.plugins.lora3d.pretrain"] + list(argv or []))
    model.train()
    print(f"tiny DUSt3R: {count_parameters(model):,} parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05,
                            betas=(0.9, 0.95))
    out = Path(args.out)
    log_path = out.with_suffix(".log.jsonl")
    patch = TINY_ARGS["patch_size"]
    # pretraining scenes have seeds >= HELD_OUT_SEEDS; a continued run takes new ones
    next_seed = HELD_OUT_SEEDS + args.seed * 10_000_000 + sum(h.get("scenes", 0)
                                                              for h in history)
    t0 = time.time()
    stream = SceneStream(next_seed, size=args.size, float_fraction=args.float_fraction,
                         max_angle=args.max_angle, patch=patch)
    scenes = iter(stream if args.workers == 0 else torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=args.workers, prefetch_factor=8))
    pool: list[dict] = []
    rendered = 0

    def add_scene() -> None:
        nonlocal rendered
        item = next(scenes)
        rendered = max(rendered, item.pop("seed") - next_seed + 1)
        # own copies: a worker's tensors arrive in shared memory, one file handle each
        item = {k: v.clone() for k, v in item.items()}
        if len(pool) < args.pool:
            pool.append(item)
        else:
            pool[rng.randrange(len(pool))] = item

    while len(pool) < max(args.initial_pool, args.batch):
        add_scene()
    print(f"initial pool of {len(pool)} scenes in {time.time() - t0:.0f}s", flush=True)
    budget = args.minutes * 60
    step, ema = 0, None
    device = torch.device(args.device)
    model.to(device)
    torch.backends.cuda.matmul.allow_tf32 = True

    def save() -> None:
        save_checkpoint(model, TINY_ARGS, out, {"pretrain": {"history": history + [{
            "command": command, "steps": step, "scenes": rendered, "regr_ema": ema}]}})

    expected = args.steps      # the cosine schedule's length, re-estimated from the pace
    with log_path.open("a") as log:
        while step < args.steps and time.time() - t0 < budget:
            for _ in range(args.new_per_step):
                add_scene()
            elapsed = time.time() - t0
            if step >= 50:
                expected = min(args.steps, int(step * budget / max(elapsed, 1e-6)))
            progress = min(step / max(expected, 1), 1.0)
            lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup)) * (
                0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
            for group in opt.param_groups:
                group["lr"] = lr
            batch = {k: v.to(device, non_blocking=True)
                     for k, v in make_batch(pool, args.batch, rng).items()}
            loss, parts = train_step(model, batch, match=args.match)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            regr = float(parts["regr"])
            ema = regr if ema is None else 0.98 * ema + 0.02 * regr
            if step % 25 == 0:
                rec = {"step": step, "loss": float(loss), "regr": regr, "regr_ema": ema,
                       "conf": float(parts["conf"]), "match": float(parts.get("match", 0)),
                       "lr": lr, "t": time.time() - t0, "scenes": rendered}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                if step % 100 == 0:
                    print(json.dumps(rec), flush=True)
            if step % args.save_every == 0:
                save()
    save()
    print(f"done: {step} steps in {time.time() - t0:.0f}s -> {out}", flush=True)


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
