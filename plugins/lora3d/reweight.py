"""LoRA3D's robust confidence re-weighting, and the pseudo-labels it selects.

Lu et al., "LoRA3D: Low-Rank Self-Calibration of 3D Geometric Foundation Models"
(ICLR 2025), robust global optimisation: after an alignment each pixel's weight becomes
`log(C) * k`, k = (mu / (mu + r))**2, r its alignment residual divided by its depth and
mu a robust residual scale (`mu_factor` x the median residual). The aligner then runs
again from where it stopped with the new weights. The calibrated confidence of a pixel
is the mean, over the edges that see it, of `C * k`; the pseudo-labels are the pixels
whose calibrated confidence passes a threshold (or the top fraction of each image),
with their aligned 3-D points as targets.

`oracle_labels` puts ground-truth points at the same pixels: the diagnostic upper bound
of what the pseudo-labels could teach.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lorakit.domains.geometry.transforms import camera_from_pointmap, to_frame
from lorakit.errors import LoraKitError

if TYPE_CHECKING:
    from .pairs import AlignmentResult, CalibrationTargets, PairPredictions


def robust_factor(residual_i: torch.Tensor, residual_j: torch.Tensor, mu_factor: float = 1.0):
    """k = (mu / (mu + r))**2 for each edge's views, mu = mu_factor x the median residual.

    LoRA3D re-weights each point's confidence C by minimising  w r + mu (sqrt(w) -
    sqrt(C))**2  over w, whose closed form is w = C k: a Geman-McClure-type kernel. r is
    the residual relative to the pixel's depth, so a far wall is not down-weighted for
    being far.
    """
    r = torch.cat([residual_i.flatten(), residual_j.flatten()])
    mu = (mu_factor * r.median()).clamp(min=1e-8)
    return (mu / (mu + residual_i)) ** 2, (mu / (mu + residual_j)) ** 2


def reweight(preds: PairPredictions, result: AlignmentResult, mu_factor: float = 1.0):
    """(weight_i, weight_j, calibrated_i, calibrated_j): the aligner's confidence weights
    log(C) multiplied by k, and the calibrated confidences C k (see robust_factor)."""
    ki, kj = robust_factor(result.residual_i, result.residual_j, mu_factor)
    return (preds.conf_i.log() * ki, preds.conf_j.log() * kj, preds.conf_i * ki,
            preds.conf_j * kj)


def image_confidence(edges, cal_i: torch.Tensor, cal_j: torch.Tensor, n: int,
                     reduce: str = "mean") -> torch.Tensor:
    """Per-image confidence (n,H,W) over the edges that see each pixel.

    'mean' (used for pseudo-labels): a pixel must be consistent in every edge that sees it
    to keep a high calibrated confidence (multi-view consistency). 'max' is DUSt3R's
    image confidence (the most confident edge).
    """
    if reduce not in ("mean", "max"):
        raise LoraKitError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    out = torch.zeros((n,) + tuple(cal_i.shape[1:]))
    count = torch.zeros(n)
    for e, (i, j) in enumerate(edges):
        for k, c in ((i, cal_i[e]), (j, cal_j[e])):
            out[k] = torch.maximum(out[k], c) if reduce == "max" else out[k] + c
            count[k] += 1
    if reduce == "mean":
        out = out / count.clamp(min=1)[:, None, None]
    return out


def select_pseudo_labels(conf: torch.Tensor, threshold: float | None = None,
                         keep_fraction: float = 0.5, min_pixels: int = 16) -> torch.Tensor:
    """Boolean masks (n,H,W) of the pixels kept as pseudo-labels.

    With `threshold`, pixels whose calibrated confidence exceeds it; otherwise the top
    `keep_fraction` of each image. An image never keeps fewer than `min_pixels`.
    """
    if threshold is None and not 0.0 < keep_fraction <= 1.0:
        raise LoraKitError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    masks = []
    for c in conf:
        flat = c.flatten()
        if threshold is not None:
            m = c > threshold
        else:
            k = max(1, int(round(keep_fraction * flat.numel())))
            m = c >= flat.topk(k).values[-1]
        if int(m.sum()) < min_pixels:
            m = c >= flat.topk(min(min_pixels, flat.numel())).values[-1]
        masks.append(m)
    return torch.stack(masks)


@dataclass
class PseudoLabels:
    """What fine-tuning sees: per image its world points, its camera and a mask."""
    pts3d: torch.Tensor       # (n,H,W,3) world frame (of the alignment, or ground truth)
    poses: torch.Tensor       # (n,4,4) camera-to-world in that frame
    masks: torch.Tensor       # (n,H,W) bool
    source: str = "pseudo"    # 'pseudo' (the alignment) or 'oracle' (ground truth)

    def targets(self, edges) -> tuple[torch.Tensor, ...]:
        """(gt_i, gt_j, mask_i, mask_j) of each edge, both views in camera i's frame."""
        gi, gj, mi, mj = [], [], [], []
        for i, j in edges:
            gi.append(to_frame(self.poses[i], self.pts3d[i]))
            gj.append(to_frame(self.poses[i], self.pts3d[j]))
            mi.append(self.masks[i])
            mj.append(self.masks[j])
        return torch.stack(gi), torch.stack(gj), torch.stack(mi), torch.stack(mj)


def pseudo_labels(targets: CalibrationTargets, all_points: bool = False) -> PseudoLabels:
    """The aligned points at the selected pixels (every pixel with all_points, an ablation)."""
    a = targets.alignment
    masks = torch.ones_like(targets.masks) if all_points else targets.masks
    return PseudoLabels(a.pts3d, a.poses, masks)


def oracle_labels(labels: PseudoLabels, gt_pts3d: torch.Tensor,
                  gt_valid: torch.Tensor | None = None,
                  gt_poses: torch.Tensor | None = None) -> PseudoLabels:
    """Ground-truth world points (n,H,W,3) at the pixels `labels` selects (and gt_valid).

    Without gt_poses each camera is recovered from its own ground-truth points
    (`camera_from_pointmap`), which is exact for a pinhole rendering.
    """
    if gt_pts3d.shape != labels.pts3d.shape:
        raise LoraKitError(f"ground-truth points have shape {tuple(gt_pts3d.shape)}, the scene "
                           f"needs {tuple(labels.pts3d.shape)} (n,H,W,3 world)")
    valid = torch.ones(gt_pts3d.shape[:3], dtype=torch.bool) if gt_valid is None \
        else gt_valid.bool()
    if gt_poses is None:
        gt_poses = torch.stack([camera_from_pointmap(p, v)[0] for p, v in zip(gt_pts3d, valid)])
    return PseudoLabels(gt_pts3d.float(), gt_poses.float(), labels.masks & valid, "oracle")
