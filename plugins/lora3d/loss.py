"""DUSt3R's confidence-aware 3-D regression loss (mini-dust3r ships none).

Wang et al., "DUSt3R: Geometric 3D Vision Made Easy" (CVPR 2024), eq. 2-4:
both views' pointmaps are expressed in the first camera's frame; prediction and target
are each divided by their own mean distance to the origin over the valid pixels of the
two views ('avg_dis' normalisation); the per-pixel Euclidean error is weighted by the
predicted confidence C, and -alpha log C keeps C from growing without bound:

    L = sum_v mean_{i in valid_v} ( C_v,i * || X_v,i / z - Xgt_v,i / zgt || - alpha log C_v,i )

`valid` may also carry real-valued weights (a pseudo-label mask); a view with no valid
pixel contributes zero.
"""
from __future__ import annotations

import torch


def _norm_factor(pts: list[torch.Tensor], valid: list[torch.Tensor]) -> torch.Tensor:
    """Mean distance to the origin over the valid pixels of all views, per batch item."""
    total = sum((p.norm(dim=-1) * v).flatten(1).sum(1) for p, v in zip(pts, valid))
    count = sum(v.flatten(1).sum(1) for v in valid)
    return (total / count.clamp(min=1e-8)).clamp(min=1e-8)


def regression_errors(pred: list[torch.Tensor], gt: list[torch.Tensor],
                      valid: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-pixel ||pred/z - gt/zgt|| for each view: (B, H, W) tensors."""
    v = [m.float() for m in valid]
    zp = _norm_factor(pred, v)
    zg = _norm_factor(gt, v)
    return [(p / zp.view(-1, 1, 1, 1) - g / zg.view(-1, 1, 1, 1)).norm(dim=-1)
            for p, g in zip(pred, gt)]


def confidence_loss(pred: list[torch.Tensor], conf: list[torch.Tensor], gt: list[torch.Tensor],
                    valid: list[torch.Tensor], alpha: float = 0.2) -> tuple[torch.Tensor, dict]:
    """The loss (a scalar) and its parts: 'regr' (unweighted error) and 'conf' (mean C)."""
    if not (len(pred) == len(conf) == len(gt) == len(valid)):
        raise ValueError("pred, conf, gt and valid must list the same views")
    errs = regression_errors(pred, gt, valid)
    total = pred[0].new_zeros(())
    regr = pred[0].new_zeros(())
    for err, c, m in zip(errs, conf, valid):
        w = m.float()
        denom = w.sum().clamp(min=1e-8)
        total = total + ((c * err - alpha * torch.log(c)) * w).sum() / denom
        regr = regr + (err * w).sum() / denom
    mean_conf = sum((c * m.float()).sum() for c, m in zip(conf, valid)) / \
        sum(m.float().sum() for m in valid).clamp(min=1e-8)
    return total, {"regr": regr.detach(), "conf": mean_conf.detach()}


def pair_targets(pts_world_1: torch.Tensor, pts_world_2: torch.Tensor,
                 pose1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World pointmaps (B,H,W,3) of both views in camera 1's frame (pose1: B,4,4 cam2world)."""
    w2c = torch.linalg.inv(pose1)
    r, t = w2c[:, None, :3, :3], w2c[:, None, :3, 3]

    def apply(p):
        return torch.einsum("bxij,bhwj->bhwi", r, p) + t[:, :, None, :]
    return apply(pts_world_1), apply(pts_world_2)
