"""What `lorakit lora3d predict` writes: PLY point cloud, poses JSON, PNG preview."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def write_ply(path, points: torch.Tensor, colors: torch.Tensor) -> Path:
    """Binary little-endian PLY of points (N,3) with colours (N,3) in [0,1]."""
    path = Path(path)
    pts = points.reshape(-1, 3).double().numpy().astype("<f4")
    col = (colors.reshape(-1, 3).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    rec = np.empty(len(pts), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                    ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    rec["red"], rec["green"], rec["blue"] = col[:, 0], col[:, 1], col[:, 2]
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(rec)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    with path.open("wb") as f:
        f.write(header.encode("ascii"))
        f.write(rec.tobytes())
    return path


def read_ply(path) -> tuple[np.ndarray, np.ndarray]:
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii")
    n = int(next(line.split()[-1] for line in header.splitlines()
                 if line.startswith("element vertex")))
    rec = np.frombuffer(data[end:], dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                           ("red", "u1"), ("green", "u1"), ("blue", "u1")],
                        count=n)
    return (np.stack([rec["x"], rec["y"], rec["z"]], -1),
            np.stack([rec["red"], rec["green"], rec["blue"]], -1))


def write_poses(path, poses: torch.Tensor, focals: torch.Tensor, names: list[str],
                size: tuple[int, int], extra: dict | None = None) -> Path:
    h, w = size
    cams = [{"image": n, "cam_to_world": p.tolist(), "focal_px": float(f),
             "principal_point_px": [(w - 1) / 2, (h - 1) / 2], "width": w, "height": h}
            for n, p, f in zip(names, poses, focals)]
    body = {"convention": "OpenCV camera (x right, y down, z forward); cam_to_world 4x4; "
                          "scene scale is arbitrary (DUSt3R)", "cameras": cams}
    body.update(extra or {})
    Path(path).write_text(json.dumps(body, indent=1))
    return Path(path)


def splat(points: torch.Tensor, colors: torch.Tensor, pose: torch.Tensor, focal: float,
          size: int) -> torch.Tensor:
    """Render points into a virtual camera with a z-buffer (one pixel per point)."""
    cam = (points.reshape(-1, 3) - pose[:3, 3]) @ pose[:3, :3]
    col = colors.reshape(-1, 3)
    z = cam[:, 2]
    ok = z > 1e-3
    cam, col, z = cam[ok], col[ok], z[ok]
    u = (focal * cam[:, 0] / z + (size - 1) / 2).round().long()
    v = (focal * cam[:, 1] / z + (size - 1) / 2).round().long()
    inside = (u >= 0) & (u < size) & (v >= 0) & (v < size)
    u, v, z, col = u[inside], v[inside], z[inside], col[inside]
    img = torch.ones(size, size, 3)
    order = torch.argsort(z, descending=True)       # far first, near overwrite
    img[v[order], u[order]] = col[order]
    return img


def orbit_pose(poses: torch.Tensor, points: torch.Tensor, angle_deg: float = 25.0):
    """A viewpoint beside the first camera, turned towards the cloud's centre."""
    center = points.reshape(-1, 3).median(0).values
    p0 = poses[0]
    offset = p0[:3, 3] - center
    a = torch.deg2rad(torch.tensor(angle_deg))
    up = -p0[:3, 1]
    # rotate the offset about the camera's up axis (Rodrigues)
    k = up / up.norm()
    rot = (offset * torch.cos(a) + torch.linalg.cross(k, offset) * torch.sin(a)
           + k * (k @ offset) * (1 - torch.cos(a)))
    eye = center + rot * 1.3
    z = torch.nn.functional.normalize(center - eye, dim=0)
    x = torch.nn.functional.normalize(torch.linalg.cross(-up, z), dim=0)
    y = torch.linalg.cross(z, x)
    pose = torch.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, eye
    return pose


def preview(path, images: torch.Tensor, depths: torch.Tensor, conf_before: torch.Tensor,
            conf_after: torch.Tensor | None, points: torch.Tensor, poses: torch.Tensor,
            focal: float, title: str = "") -> Path:
    """PNG: per view the image, depth, confidence before / after; plus a rendered view."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = images.shape[0]
    rows = 4 if conf_after is not None else 3
    fig, axes = plt.subplots(rows, n + 1, figsize=(1.9 * (n + 1), 1.9 * rows), squeeze=False)
    cmax = float(max(conf_before.max(), conf_after.max() if conf_after is not None else 0))
    for k in range(n):
        axes[0, k].imshow(images[k].clamp(0, 1).numpy())
        axes[0, k].set_title(f"view {k}", fontsize=8)
        axes[1, k].imshow(depths[k].numpy(), cmap="magma_r")
        axes[2, k].imshow(conf_before[k].numpy(), cmap="viridis", vmin=1, vmax=cmax)
        if conf_after is not None:
            axes[3, k].imshow(conf_after[k].numpy(), cmap="viridis", vmin=1, vmax=cmax)
    labels = ["image", "depth", "conf. before", "conf. after"]
    for r in range(rows):
        axes[r, 0].set_ylabel(labels[r], fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    cols = images.reshape(-1, 3)
    view = splat(points, cols, orbit_pose(poses, points), focal, 96)
    axes[0, n].imshow(view.numpy())
    axes[0, n].set_title("point cloud", fontsize=8)
    for r in range(1, rows):
        axes[r, n].axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
