"""Sample grids as PNG: images in [-1, 1], one row per class (or per prompt)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: torch.Tensor, path, nrow: int = 10, scale: int = 4, pad: int = 2) -> Path:
    """Tile N images into rows of `nrow`, upscaled `scale`x (nearest) with a grey border."""
    from PIL import Image

    arr = to_uint8(images)
    n, h, w, c = arr.shape
    ncol = min(nrow, n)
    rows = (n + ncol - 1) // ncol
    hh, ww = h * scale, w * scale
    canvas = np.full((rows * (hh + pad) + pad, ncol * (ww + pad) + pad, c), 96, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        tile = arr[i].repeat(scale, 0).repeat(scale, 1)
        y0, x0 = pad + r * (hh + pad), pad + col * (ww + pad)
        canvas[y0:y0 + hh, x0:x0 + ww] = tile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = canvas[..., 0] if c == 1 else canvas
    Image.fromarray(img).save(path)
    return path
