"""Read one scene's photos from a folder, resized and centre-cropped to the model's size.

Errors are `lorakit.errors.LoraKitError` with a message that names the folder or file:
a missing or empty folder, an image that cannot be read, fewer than two images, images
of mixed sizes (a scene's photos come from one camera: mixed sizes usually mean a stray
file; pass `allow_mixed_sizes=True` to resize them all anyway).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lorakit.errors import LoraKitError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def list_images(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise LoraKitError(f"image folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise LoraKitError(f"{str(folder)!r} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS
                   and p.is_file())
    if not files:
        others = sorted(p.name for p in folder.iterdir())[:5]
        raise LoraKitError(f"image folder {str(folder)!r} holds no images "
                           f"({', '.join(EXTENSIONS)})" + (f"; found {others}" if others else
                                                          ": it is empty"))
    return files


def resize_crop(img, size: int):
    """PIL image to a size x size RGB crop: shorter side scaled to `size`, centre crop."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    img = img.resize((nw, nh), Image.LANCZOS if s < 1 else Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def read_folder(folder, size: int = 64, allow_mixed_sizes: bool = False,
                max_images: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """(n, size, size, 3) float images in [0, 1] and their file names."""
    from PIL import Image, UnidentifiedImageError

    files = list_images(folder)
    if max_images is not None:
        files = files[:max_images]
    images, sizes = [], {}
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                sizes[f.name] = im.size
                images.append(resize_crop(im, size))
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise LoraKitError(f"cannot read image {str(f)!r}: {err}") from None
    if len(images) < 2:
        raise LoraKitError(f"image folder {str(folder)!r} has {len(images)} image; "
                           "self-calibration needs at least two views of the scene")
    distinct = sorted(set(sizes.values()))
    if len(distinct) > 1 and not allow_mixed_sizes:
        by = {s: [n for n, v in sizes.items() if v == s] for s in distinct}
        desc = "; ".join(f"{w}x{h}: {', '.join(names[:3])}" for (w, h), names in by.items())
        raise LoraKitError(f"images in {str(folder)!r} have mixed sizes ({desc}); use photos "
                           "of one camera, or allow_mixed_sizes=True to resize them all")
    arr = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    return torch.from_numpy(arr), [f.name for f in files]


def write_folder(images: torch.Tensor, folder, prefix: str = "view") -> list[Path]:
    """Save (n,H,W,3) images in [0,1] as PNGs (for demos and tests)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, img in enumerate(images):
        p = folder / f"{prefix}_{k:03d}.png"
        Image.fromarray((img.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(p)
        paths.append(p)
    return paths
