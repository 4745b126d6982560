"""scikit-learn's bundled handwritten digits as 16x16 images in [-1, 1].

`sklearn.datasets.load_digits` ships 1,797 8x8 greyscale digits (values 0..16) with
the package, so nothing is downloaded. They are upsampled bilinearly to 16x16 (a
UNet with three resolutions needs a side divisible by 4) and mapped to [-1, 1], the
range a DDPM/DDIM sampler clips to.

A fixed, stratified split (seed 0) keeps 20% of every class out of teacher and
classifier training, for scoring.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 16
NUM_CLASSES = 10


@dataclass
class Digits:
    images: torch.Tensor  # (N, 1, 16, 16) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64 in 0..9

    def __len__(self) -> int:
        return len(self.labels)


def upsample(images8: np.ndarray | torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """(N, 8, 8) values 0..16 -> (N, 1, size, size) float32 in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images8), dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 2.0 - 1.0).clamp(-1.0, 1.0)


def load_digits(split: str = "all", size: int = SIZE) -> Digits:
    """The digits as images in [-1, 1]; split is "train" (80%), "test" (20%) or "all"."""
    from sklearn.datasets import load_digits as sk_load_digits

    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    raw = sk_load_digits()
    images = upsample(raw.images, size)
    labels = torch.as_tensor(raw.target, dtype=torch.int64)
    if split == "all":
        return Digits(images, labels)
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(raw.target == c)
        test[rng.permutation(idx)[: len(idx) // 5]] = True
    keep = torch.as_tensor(test if split == "test" else ~test)
    return Digits(images[keep], labels[keep])
