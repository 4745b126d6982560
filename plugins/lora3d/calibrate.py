"""LoRA3D self-calibration, stage by stage.

    pairwise inference -> robust global alignment (align, re-weight, align ...)
    -> pseudo-labels (pixels of high calibrated confidence, their aligned 3-D points)
    -> LoRA fine-tuning with DUSt3R's confidence-aware loss on the pseudo-labelled pairs.

No ground truth and no external prior enters any stage. `SelfCalibration` keeps the
settings; the Lightning module (module.py), the demo and the benchmark all use it.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from lorakit.config import LoRAConfig
from lorakit.errors import LoraKitError

from .align import AlignmentError, CalibrationTargets, PairPredictions, robust_alignment, to_frame
from .loss import confidence_loss
from .model import LORA_TARGETS


def make_pairs(n: int, graph: str = "complete", window: int = 2) -> list[tuple[int, int]]:
    """Ordered, symmetric pairs: 'complete' (all i != j) or 'swin' (|i - j| <= window)."""
    if n < 2:
        raise LoraKitError(f"a scene needs at least two images, got {n}")
    if graph == "complete":
        return [(i, j) for i in range(n) for j in range(n) if i != j]
    if graph == "swin":
        if window < 1:
            raise LoraKitError(f"sliding-window size must be >= 1, got {window}")
        return [(i, j) for i in range(n) for j in range(n) if i != j and abs(i - j) <= window]
    raise LoraKitError(f"pair graph must be 'complete' or 'swin', got {graph!r}")


def to_input(images: torch.Tensor) -> torch.Tensor:
    """(B,H,W,3) in [0,1] to DUSt3R's (B,3,H,W) in [-1,1]."""
    return images.permute(0, 3, 1, 2) * 2 - 1


def _view(img: torch.Tensor, ids) -> dict:
    return {"img": img, "true_shape": torch.tensor([list(img.shape[-2:])] * img.shape[0]),
            "idx": [int(i) for i in ids], "instance": [str(int(i)) for i in ids]}


def predict_pairs(model: nn.Module, images: torch.Tensor, edges, batch: int = 16):
    """Model outputs (with grad if enabled) for edges: pts_i, pts_j, conf_i, conf_j."""
    outs = {"pts_i": [], "pts_j": [], "conf_i": [], "conf_j": []}
    x = to_input(images)
    for s in range(0, len(edges), batch):
        chunk = edges[s:s + batch]
        ii = [i for i, _ in chunk]
        jj = [j for _, j in chunk]
        r1, r2 = model(_view(x[ii], ii), _view(x[jj], jj))
        outs["pts_i"].append(r1["pts3d"])
        outs["pts_j"].append(r2["pts3d_in_other_view"])
        outs["conf_i"].append(r1["conf"])
        outs["conf_j"].append(r2["conf"])
    return {k: torch.cat(v) for k, v in outs.items()}


@torch.no_grad()
def pairwise_inference(model: nn.Module, images: torch.Tensor, edges,
                       batch: int = 16) -> PairPredictions:
    was = model.training
    model.eval()
    try:
        o = predict_pairs(model, images, list(edges), batch)
    finally:
        model.train(was)
    preds = PairPredictions(list(edges), o["pts_i"], o["pts_j"], o["conf_i"], o["conf_j"])
    for name in ("pts_i", "pts_j", "conf_i", "conf_j"):
        if not torch.isfinite(getattr(preds, name)).all():
            raise AlignmentError("pairwise inference", f"the model predicted NaN/inf {name}")
    return preds


@dataclass
class PseudoLabels:
    """What fine-tuning sees: per image the aligned world points and a mask."""
    pts3d: torch.Tensor       # (n,H,W,3) world frame of the alignment
    poses: torch.Tensor       # (n,4,4) camera-to-world
    masks: torch.Tensor       # (n,H,W) bool
    edges: list[tuple[int, int]]

    def targets(self, edges) -> tuple[torch.Tensor, ...]:
        """(gt_i, gt_j, mask_i, mask_j) of each edge, both views in camera i's frame."""
        gi, gj, mi, mj = [], [], [], []
        for i, j in edges:
            gi.append(to_frame(self.poses[i], self.pts3d[i]))
            gj.append(to_frame(self.poses[i], self.pts3d[j]))
            mi.append(self.masks[i])
            mj.append(self.masks[j])
        return torch.stack(gi), torch.stack(gj), torch.stack(mi), torch.stack(mj)


def pseudo_labels(targets: CalibrationTargets, edges, all_points: bool = False) -> PseudoLabels:
    a = targets.alignment
    masks = torch.ones_like(targets.masks) if all_points else targets.masks
    return PseudoLabels(a.pts3d, a.poses, masks, list(edges))


def calibration_loss(model: nn.Module, images: torch.Tensor, labels: PseudoLabels, edges,
                     alpha: float = 0.2):
    o = predict_pairs(model, images, list(edges), batch=len(edges))
    gi, gj, mi, mj = labels.targets(edges)
    return confidence_loss([o["pts_i"], o["pts_j"]], [o["conf_i"], o["conf_j"]], [gi, gj],
                           [mi, mj], alpha)


@dataclass
class SelfCalibration:
    """Settings of the pipeline (every field is a CLI option of `lorakit lora3d fit`)."""
    graph: str = "complete"            # pair graph: 'complete' or 'swin'
    window: int = 2                    # sliding-window size for 'swin'
    align_iters: int = 150             # iterations of the first alignment
    round_iters: int = 50              # iterations of each re-weighting round
    align_lr: float = 0.01
    reweight_rounds: int = 2           # 0: ablation without confidence re-weighting
    mu_factor: float = 1.0             # robust residual scale = mu_factor x median residual
    conf_threshold: float | None = None  # absolute calibrated-confidence threshold, or
    keep_fraction: float = 0.5         # ... the top fraction of each image
    all_points: bool = False           # ablation: every pixel is a pseudo-label
    init: str = "mst"
    backend: str = "auto"              # aligner: 'auto', 'native', 'upstream'
    rank: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    steps: int = 60
    lr: float = 2e-3
    batch_pairs: int = 6
    loss_alpha: float = 0.2
    seed: int = 0

    def lora_config(self) -> LoRAConfig:
        return LoRAConfig(rank=self.rank, alpha=self.alpha, targets=list(self.targets))

    def align(self, preds: PairPredictions, verbose: bool = False) -> CalibrationTargets:
        return robust_alignment(preds, rounds=self.reweight_rounds, niter=self.align_iters,
                                niter_round=self.round_iters, lr=self.align_lr,
                                init=self.init, backend=self.backend, mu_factor=self.mu_factor,
                                threshold=self.conf_threshold, keep_fraction=self.keep_fraction,
                                verbose=verbose)

    def to_dict(self) -> dict:
        return asdict(self)


def finetune(model: nn.Module, adapters, images: torch.Tensor, labels: PseudoLabels,
             cfg: SelfCalibration, log_every: int = 0) -> list[dict]:
    """LoRA fine-tuning on the pseudo-labelled pairs; returns the loss log."""
    params = list(adapters.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    edges = list(labels.edges)
    log = []
    model.train()
    for step in range(cfg.steps):
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(cfg.steps, 1)))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = rng.sample(edges, min(cfg.batch_pairs, len(edges)))
        loss, parts = calibration_loss(model, images, labels, batch, cfg.loss_alpha)
        if not torch.isfinite(loss):
            raise LoraKitError(f"LoRA fine-tuning diverged at step {step} "
                               f"(loss {loss.detach().item()})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        rec = {"step": step, "loss": loss.detach().item(), "regr": float(parts["regr"])}
        log.append(rec)
        if log_every and step % log_every == 0:
            print(f"lora3d: step {step}: loss {rec['loss']:.4f}", flush=True)
    model.eval()
    return log


@dataclass
class CalibrationRun:
    before: PairPredictions
    targets: CalibrationTargets
    labels: PseudoLabels
    log: list[dict]
    times: dict
    adapters: object


def self_calibrate(model: nn.Module, images: torch.Tensor, cfg: SelfCalibration,
                   verbose: bool = False) -> CalibrationRun:
    """The whole pipeline on one scene: the model comes back with adapters attached."""
    from lorakit import attach

    torch.manual_seed(cfg.seed)
    edges = make_pairs(images.shape[0], cfg.graph, cfg.window)
    times = {}
    t = time.perf_counter()
    before = pairwise_inference(model, images, edges)
    times["inference_s"] = time.perf_counter() - t
    t = time.perf_counter()
    targets = cfg.align(before, verbose)
    times["alignment_s"] = time.perf_counter() - t
    labels = pseudo_labels(targets, edges, cfg.all_points)
    for p in model.parameters():
        p.requires_grad_(False)
    adapters = attach(model, cfg.lora_config())
    t = time.perf_counter()
    log = finetune(model, adapters, images, labels, cfg, log_every=20 if verbose else 0)
    times["finetune_s"] = time.perf_counter() - t
    return CalibrationRun(before, targets, labels, log, times, adapters)
