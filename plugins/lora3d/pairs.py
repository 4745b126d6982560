"""What pairwise inference and global alignment hand each other: DUSt3R's predictions
for a pair graph, an alignment's result, LoRA3D's calibration targets, and the error a
diverged alignment raises. Data only, so the aligners, the re-weighting and the driver
(align.py) all import it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lorakit.errors import LoraKitError


class AlignmentError(LoraKitError):
    """Global alignment failed (NaN / divergence); `stage` says where."""

    def __init__(self, stage: str, detail: str) -> None:
        super().__init__(f"global alignment diverged at stage {stage!r}: {detail}")
        self.stage = stage


# --- the pairwise predictions and what alignment makes of them ---------------------------
@dataclass
class PairPredictions:
    """DUSt3R's output for a list of ordered pairs: everything in view i's frame."""
    edges: list[tuple[int, int]]
    pts_i: torch.Tensor       # (E, H, W, 3)
    pts_j: torch.Tensor       # (E, H, W, 3)
    conf_i: torch.Tensor      # (E, H, W)
    conf_j: torch.Tensor      # (E, H, W)

    @property
    def n_images(self) -> int:
        return 1 + max(max(e) for e in self.edges)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.pts_i.shape[1:3])

    def to(self, device) -> PairPredictions:
        return PairPredictions(self.edges, self.pts_i.to(device), self.pts_j.to(device),
                               self.conf_i.to(device), self.conf_j.to(device))

    def check(self) -> None:
        nodes = sorted({k for e in self.edges for k in e})
        if nodes != list(range(len(nodes))) or len(nodes) < 2:
            raise LoraKitError(f"pair graph must cover images 0..n-1 (n >= 2), got {nodes}")
        for name in ("pts_i", "pts_j", "conf_i", "conf_j"):
            t = getattr(self, name)
            if not torch.isfinite(t).all():
                raise AlignmentError("pairwise inference",
                                     f"the model predicted NaN or inf in {name}")


@dataclass
class AlignmentResult:
    poses: torch.Tensor           # (n, 4, 4) camera-to-world
    focals: torch.Tensor          # (n,)
    depths: torch.Tensor          # (n, H, W)
    pts3d: torch.Tensor           # (n, H, W, 3) world
    loss: float
    init: str
    residual_i: torch.Tensor      # (E, H, W) residual of each edge's view i / the pixel's depth
    residual_j: torch.Tensor      # (E, H, W) the same for view j
    backend: str = "native"       # the aligner that ran: 'native' or 'upstream'
    history: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)




# --- the driver ---------------------------------------------------------------------------------


@dataclass
class CalibrationTargets:
    alignment: AlignmentResult
    confidence_before: torch.Tensor   # (n,H,W) raw image confidence
    confidence_after: torch.Tensor    # (n,H,W) calibrated
    masks: torch.Tensor               # (n,H,W) pseudo-label masks
    rounds: list[dict]
