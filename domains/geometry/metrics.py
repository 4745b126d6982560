"""Scores of a reconstruction against ground truth (scale-free, as DUSt3R's outputs are).

- `depth_absrel`: mean |s d - d*| / d* after the per-image median scale s = med(d*/d).
- `pointmap_error`: mean ||a(X) - X*|| / mean ||X* - mean(X*)||, a the least-squares
  scale ('scale', same frame) or similarity ('sim3', any frame) alignment.
- `relative_pose_errors`: over every pair of views, the angle (degrees) between the
  predicted and true relative rotations, and between the predicted and true relative
  translation directions.
"""
from __future__ import annotations

import math

import torch

from .transforms import similarity


def depth_absrel(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """pred, gt: (n,H,W) or (H,W) depths; median-scaled per image."""
    if pred.dim() == 2:
        pred, gt = pred[None], gt[None]
        valid = None if valid is None else valid[None]
    scores = []
    for k in range(pred.shape[0]):
        m = (gt[k] > 0) & (pred[k] > 0) & torch.isfinite(pred[k])
        if valid is not None:
            m &= valid[k].bool()
        if not m.any():
            continue
        d, g = pred[k][m], gt[k][m]
        s = (g / d).median()
        scores.append(((s * d - g).abs() / g).mean())
    return float(torch.stack(scores).mean()) if scores else float("nan")


def pointmap_error(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None,
                   mode: str = "sim3") -> float:
    """pred, gt: (...,3) pointmaps; relative error after scale or similarity alignment."""
    p, g = pred.reshape(-1, 3).double(), gt.reshape(-1, 3).double()
    if valid is not None:
        m = valid.reshape(-1).bool()
        p, g = p[m], g[m]
    ok = torch.isfinite(p).all(-1)
    p, g = p[ok], g[ok]
    if mode == "scale":
        s = (p * g).sum() / (p * p).sum().clamp(min=1e-12)
        aligned = s * p
    elif mode == "sim3":
        s, r, t = similarity(p, g)
        aligned = s * p @ r.T + t
    else:
        raise ValueError(f"mode must be 'scale' or 'sim3', got {mode!r}")
    spread = (g - g.mean(0)).norm(dim=-1).mean().clamp(min=1e-12)
    return float((aligned - g).norm(dim=-1).mean() / spread)


def rotation_angle_deg(r: torch.Tensor) -> torch.Tensor:
    cos = ((r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


def depth_delta1(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None,
                 threshold: float = 1.25) -> float:
    """Fraction of pixels with max(s d / d*, d* / s d) < threshold, s the per-image median
    scale med(d*/d) (as in `depth_absrel`); pred, gt (n,H,W) or (H,W)."""
    pred, gt = pred.reshape(-1, *pred.shape[-2:]), gt.reshape(-1, *gt.shape[-2:])
    m = (gt > 0) & (pred > 0) & torch.isfinite(pred)
    if valid is not None:
        m &= valid.reshape(m.shape).bool()
    scale = torch.where(m, gt / pred, torch.nan).flatten(1).nanmedian(1).values
    d = pred * scale[:, None, None]
    ok = (torch.maximum(d / gt, gt / d) < threshold) & m
    seen = m.flatten(1).sum(1)
    per_image = ok.flatten(1).sum(1)[seen > 0] / seen[seen > 0]
    return float(per_image.mean()) if len(per_image) else float("nan")


def focal_error(focals: torch.Tensor, K: torch.Tensor) -> float:
    """Mean |f - f*| / f* over the views; focals (n,) in pixels, K (n,3,3) the true ones."""
    true = (K[:, 0, 0] + K[:, 1, 1]) / 2
    return float(((focals.to(true.dtype) - true).abs() / true).mean())


def pose_error(r: torch.Tensor, t: torch.Tensor, r_gt: torch.Tensor,
               t_gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotation error, translation-direction error), degrees, of one relative pose
    (rotation r, translation t) against the true one, in double precision."""
    r, t, r_gt, t_gt = (v.double() for v in (r, t, r_gt, t_gt))
    cos = (t @ t_gt) / (t.norm() * t_gt.norm()).clamp(min=1e-12)
    return rotation_angle_deg(r.T @ r_gt), torch.rad2deg(torch.acos(cos.clamp(-1, 1)))


def relative_pose_errors(pred_poses: torch.Tensor, gt_poses: torch.Tensor) -> dict:
    """Mean relative rotation error and translation-direction error (degrees) over pairs."""
    n = pred_poses.shape[0]
    rre, rte = [], []

    def rel(p, i, j):
        r = p[i, :3, :3].T @ p[j, :3, :3]
        t = p[i, :3, :3].T @ (p[j, :3, 3] - p[i, :3, 3])
        return r, t
    for i in range(n):
        for j in range(i + 1, n):
            rot, trans = pose_error(*rel(pred_poses.double(), i, j),
                                    *rel(gt_poses.double(), i, j))
            rre.append(rot)
            rte.append(trans)
    if not rre:
        return {"rot_err_deg": float("nan"), "trans_dir_err_deg": float("nan")}
    return {"rot_err_deg": float(torch.stack(rre).mean()),
            "trans_dir_err_deg": float(torch.stack(rte).mean())}


def pair_relative_pose(own_i: torch.Tensor, j_in_i: torch.Tensor, own_j: torch.Tensor,
                       w: torch.Tensor | None = None):
    """Relative pose (cam j to cam i, 4x4) from pointmaps of view j in both frames."""
    src, dst = own_j.reshape(-1, 3), j_in_i.reshape(-1, 3)
    if w is not None:
        m = w.reshape(-1) > 0
        src, dst = src[m], dst[m]
    s, r, t = similarity(src, dst)
    pose = torch.eye(4)
    pose[:3, :3], pose[:3, 3] = r, t / s
    return pose


def summarize(values: list[float]) -> dict:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return {"mean": float("nan"), "n": 0}
    return {"mean": sum(v) / len(v), "n": len(v)}
