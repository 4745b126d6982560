"""DUSt3R over a scene's pair graph: which pairs, in which input format, and the outputs.

    images (n,H,W,3) in [0,1] --make_pairs--> edges (i, j)
    --pairwise_inference--> PairPredictions: per edge, both pointmaps in view i's frame
    and their confidences.
"""
from __future__ import annotations

import torch
from torch import nn

from lorakit.errors import LoraKitError

from .pairs import PairPredictions


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


def model_view(img: torch.Tensor, ids) -> dict:
    """One side of a DUSt3R call: a batch of normalised images and their image ids."""
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
        r1, r2 = model(model_view(x[ii], ii), model_view(x[jj], jj))
        outs["pts_i"].append(r1["pts3d"])
        outs["pts_j"].append(r2["pts3d_in_other_view"])
        outs["conf_i"].append(r1["conf"])
        outs["conf_j"].append(r2["conf"])
    return {k: torch.cat(v) for k, v in outs.items()}


@torch.no_grad()
def pairwise_inference(model: nn.Module, images: torch.Tensor, edges,
                       batch: int = 16) -> PairPredictions:
    """The model (in eval mode, no grad) over every edge, checked for NaN/inf."""
    was = model.training
    model.eval()
    try:
        o = predict_pairs(model, images, list(edges), batch)
    finally:
        model.train(was)
    preds = PairPredictions(list(edges), o["pts_i"], o["pts_j"], o["conf_i"], o["conf_j"])
    preds.check()
    return preds
