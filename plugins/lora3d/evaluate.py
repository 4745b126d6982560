"""Scoring a DUSt3R (with or without adapters) on scenes with ground truth.

`score_scene`: pairwise inference, plain global alignment (DUSt3R's, no re-weighting:
the same for the model before and after calibration), then depth AbsRel, pointmap error
after similarity alignment, relative rotation / translation-direction errors.
`score_pairs`: the pretraining check, pair by pair, against the mean-pointmap baseline.
"""
from __future__ import annotations

import torch

from lorakit.domains.geometry.metrics import (
    depth_absrel,
    pair_relative_pose,
    pointmap_error,
    relative_pose_errors,
    rotation_angle_deg,
)
from lorakit.domains.geometry.scenes import SceneViews

from .align import PairPredictions, robust_alignment, to_frame
from .calibrate import make_pairs, pairwise_inference


def score_alignment(result, views: SceneViews) -> dict:
    out = {"depth_absrel": depth_absrel(result.depths, views.depth, views.valid),
           "pointmap_err": pointmap_error(result.pts3d, views.pts3d, views.valid, "sim3")}
    out.update(relative_pose_errors(result.poses, views.poses))
    return out


def score_scene(model, views: SceneViews, graph: str = "complete", window: int = 2,
                niter: int = 200, backend: str = "auto",
                preds: PairPredictions | None = None) -> tuple[dict, object]:
    edges = make_pairs(views.images.shape[0], graph, window)
    if preds is None:
        preds = pairwise_inference(model, views.images, edges)
    targets = robust_alignment(preds, rounds=0, niter=niter, backend=backend)
    return score_alignment(targets.alignment, views), targets


def _pair_gt(v: SceneViews) -> tuple[torch.Tensor, torch.Tensor]:
    return to_frame(v.poses[0], v.pts3d[0]), to_frame(v.poses[0], v.pts3d[1])


def mean_pointmap(pairs: list[SceneViews]) -> torch.Tensor:
    """The baseline's prediction (2,H,W,3): the mean ground-truth pointmap of `pairs`, each
    normalised by its mean distance. Build it from pairs that are not scored."""
    norm = []
    for v in pairs:
        g = torch.stack(_pair_gt(v))
        norm.append(g / g.norm(dim=-1).mean())
    return torch.stack(norm).mean(0)


@torch.no_grad()
def score_pairs(model, pairs: list[SceneViews], baseline: torch.Tensor) -> dict:
    """Pairwise depth AbsRel, scale-aligned pointmap error and relative rotation error.

    The baseline predicts `baseline` (a `mean_pointmap` of other pairs, (2,H,W,3)) for
    every input, and the identity rotation.
    """
    model.eval()
    rows = {"model": [], "baseline": []}
    for v in pairs:
        g1, g2 = _pair_gt(v)
        p = pairwise_inference(model, v.images, [(0, 1), (1, 0)])
        rel_gt = torch.linalg.inv(v.poses[0]) @ v.poses[1]
        rel = pair_relative_pose(p.pts_i[0], p.pts_j[0], p.pts_i[1])
        for name, (a, b, r) in {
                "model": (p.pts_i[0], p.pts_j[0], rel),
                "baseline": (baseline[0], baseline[1], torch.eye(4))}.items():
            rows[name].append({
                "depth_absrel": depth_absrel(a[..., 2].clamp(min=1e-6), g1[..., 2]),
                "pointmap_err": pointmap_error(torch.stack([a, b]), torch.stack([g1, g2]),
                                               mode="scale"),
                "rot_err_deg": float(rotation_angle_deg(r[:3, :3].T @ rel_gt[:3, :3]))})
    return {name: {k: sum(r[k] for r in rs) / len(rs) for k in rs[0]}
            for name, rs in rows.items()}


def checkpoint_card(checkpoint=None, n_pairs: int = 40) -> dict:
    """The pretraining check of a checkpoint: pairwise scores vs the mean-pointmap baseline
    on held-out pairs (seeds below the pretraining range) of the pretraining styles and of
    the unseen 'cells' style. The baseline's mean pointmap is built from a disjoint set of
    held-out pairs (seeds n_pairs .. 2 n_pairs - 1)."""
    import argparse as _argparse

    from lorakit.domains.geometry.scenes import random_pair

    from .model import EMBEDDED, count_parameters, load_checkpoint
    model, args = load_checkpoint(checkpoint)
    path = checkpoint or EMBEDDED
    with torch.serialization.safe_globals([_argparse.Namespace]):
        raw = torch.load(path, map_location="cpu", weights_only=True)
    size = args["img_size"][0]
    # the baseline's mean pointmap comes from other held-out pairs than those scored
    base = mean_pointmap([random_pair(s, size) for s in range(n_pairs, 2 * n_pairs)])
    seen = score_pairs(model, [random_pair(s, size) for s in range(n_pairs)], base)
    unseen = score_pairs(model, [random_pair(s, size, styles=("cells",))
                                 for s in range(n_pairs)], base)
    return {"parameters": count_parameters(model), "args": {k: str(v) for k, v in args.items()},
            "pretrain": raw.get("pretrain", {}), "held_out_pairs": n_pairs,
            "pretraining_styles": seen, "unseen_cells_style": unseen}


if __name__ == "__main__":
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(description="score a DUSt3R checkpoint against the "
                                             "mean-pointmap baseline")
    ap.add_argument("checkpoint", nargs="?", default=None)
    ap.add_argument("--out", default=None, help="write the card as JSON here")
    ap.add_argument("--pairs", type=int, default=40)
    a = ap.parse_args(sys.argv[1:])
    card = checkpoint_card(a.checkpoint, a.pairs)
    text = json.dumps(card, indent=1, default=str)
    if a.out:
        from pathlib import Path
        Path(a.out).write_text(text)
    print(text)
