"""Poses, similarity transforms and pinhole cameras: the geometry that aligners and metrics share.

Conventions (those of DUSt3R and of `scenes`): OpenCV camera axes (x right, y down,
z forward), poses are camera-to-world 4x4, the principal point is the image centre,
quaternions are (x, y, z, w).

- `similarity`: the (weighted) least-squares s, R, t with s R src + t ~ dst (Umeyama 1991),
  the one Procrustes solver of lorakit (aligner initialisation, metrics, relative poses).
- `quat_to_rotmat` / `rotmat_to_quat`, `apply` (a 4x4 to points), `to_frame` (world
  points into a camera's frame).
- `pixel_grid`, `estimate_focal`: the pinhole model with a centred principal point.
- `camera_from_pointmap`: a camera (pose and K) from a world pointmap (DLT), for ground
  truth given as world points only.
"""
from __future__ import annotations

import torch

from lorakit.errors import LoraKitError


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions (x, y, z, w), normalised here, to (..., 3, 3)."""
    q = q / q.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    x, y, z, w = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1).reshape(
        q.shape[:-1] + (3, 3))


def rotmat_to_quat(r: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices to (..., 4) quaternions (x, y, z, w)."""
    m = r.reshape(-1, 3, 3)
    out = []
    for a in m:
        t = a.trace()
        if t > 0:
            s = torch.sqrt(t + 1.0) * 2
            q = [(a[2, 1] - a[1, 2]) / s, (a[0, 2] - a[2, 0]) / s, (a[1, 0] - a[0, 1]) / s, s / 4]
        elif a[0, 0] > a[1, 1] and a[0, 0] > a[2, 2]:
            s = torch.sqrt(1.0 + a[0, 0] - a[1, 1] - a[2, 2]) * 2
            q = [s / 4, (a[0, 1] + a[1, 0]) / s, (a[0, 2] + a[2, 0]) / s, (a[2, 1] - a[1, 2]) / s]
        elif a[1, 1] > a[2, 2]:
            s = torch.sqrt(1.0 + a[1, 1] - a[0, 0] - a[2, 2]) * 2
            q = [(a[0, 1] + a[1, 0]) / s, s / 4, (a[1, 2] + a[2, 1]) / s, (a[0, 2] - a[2, 0]) / s]
        else:
            s = torch.sqrt(1.0 + a[2, 2] - a[0, 0] - a[1, 1]) * 2
            q = [(a[0, 2] + a[2, 0]) / s, (a[1, 2] + a[2, 1]) / s, s / 4, (a[1, 0] - a[0, 1]) / s]
        out.append(torch.stack(q))
    return torch.stack(out).reshape(r.shape[:-2] + (4,))


def similarity(src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor | None = None,
               rotation: bool = True, scale: bool = True):
    """s, R, t minimising sum_k w_k ||s R src_k + t - dst_k||^2; src, dst (N,3), w (N,) >= 0.

    Umeyama (1991), weighted: the rotation from the SVD of the weighted cross-covariance
    with the reflection removed. rotation=False fits scale and translation only (R = I);
    scale=False a rigid transform (s = 1).
    """
    w = torch.ones(len(src), dtype=src.dtype) if weights is None else weights.clamp(min=0)
    w = w / w.sum().clamp(min=1e-12)
    mu_s = (w[:, None] * src).sum(0)
    mu_d = (w[:, None] * dst).sum(0)
    a, b = src - mu_s, dst - mu_d
    var = (w * (a * a).sum(-1)).sum().clamp(min=1e-12)
    if not rotation:
        s = (w * (a * b).sum(-1)).sum() / var if scale else torch.ones((), dtype=src.dtype)
        return s, torch.eye(3, dtype=src.dtype), mu_d - s * mu_s
    u, sig, vt = torch.linalg.svd((w[:, None] * b).T @ a)
    d = torch.ones(3, dtype=src.dtype)
    if torch.det(u @ vt) < 0:
        d[2] = -1
    r = u @ torch.diag(d) @ vt
    s = (sig * d).sum() / var if scale else torch.ones((), dtype=src.dtype)
    return s, r, mu_d - s * r @ mu_s


def apply(m: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """A 4x4 (or 3x4) transform applied to points (..., 3)."""
    return pts @ m[:3, :3].T + m[:3, 3]


def to_frame(pose_c2w: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """World points (...,3) into the frame of a camera-to-world pose (4,4)."""
    r, t = pose_c2w[:3, :3], pose_c2w[:3, 3]
    return (pts - t) @ r


def pixel_grid(h: int, w: int) -> torch.Tensor:
    """(H,W,2) pixel coordinates (u, v) relative to the image centre."""
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                          torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([u - (w - 1) / 2, v - (h - 1) / 2], -1)


def estimate_focal(pts_cam: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Focal (pixels) of a camera-frame pointmap (H,W,3), principal point at the centre.

    The weighted least-squares f of  (u, v) - centre = f (x/z, y/z)  over pixels in front
    of the camera with positive weight.
    """
    grid = pixel_grid(*pts_cam.shape[:2]).to(pts_cam.dtype)
    z = pts_cam[..., 2]
    ok = (z > 1e-6) & (w > 0)
    xz = torch.where(ok, pts_cam[..., 0] / z.clamp(min=1e-6), torch.zeros_like(z))
    yz = torch.where(ok, pts_cam[..., 1] / z.clamp(min=1e-6), torch.zeros_like(z))
    ww = torch.where(ok, w, torch.zeros_like(w))
    num = (ww * (grid[..., 0] * xz + grid[..., 1] * yz)).sum()
    den = (ww * (xz * xz + yz * yz)).sum()
    return num / den


def _normaliser(x: torch.Tensor) -> torch.Tensor:
    """Hartley's conditioning: centre the points, mean distance sqrt(dim)."""
    dim = x.shape[1]
    mu = x.mean(0)
    s = (dim ** 0.5) / (x - mu).norm(dim=-1).mean().clamp(min=1e-12)
    t = torch.eye(dim + 1, dtype=x.dtype)
    t[:dim, :dim] *= s
    t[:dim, dim] = -s * mu
    return t


def camera_from_pointmap(pts: torch.Tensor, valid: torch.Tensor | None = None,
                         max_reprojection_px: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(camera-to-world pose (4,4), K (3,3)) of the camera that sees world points (H,W,3).

    The direct linear transform (Hartley & Zisserman, sec. 7.1): the 3x4 projection P
    with P X ~ (u, v, 1) for every valid pixel, split into K [R | t] by an RQ
    decomposition. Needs points that are not all on one plane; raises LoraKitError when
    the recovered camera reprojects the points worse than `max_reprojection_px`.
    """
    h, w = pts.shape[:2]
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                          torch.arange(w, dtype=torch.float64), indexing="ij")
    m = torch.isfinite(pts).all(-1) if valid is None else valid.bool() & torch.isfinite(pts).all(-1)
    x, uv = pts[m].double(), torch.stack([u[m], v[m]], -1)
    if len(x) < 6:
        raise LoraKitError(f"a camera from world points needs >= 6 valid pixels, got {len(x)}")
    t3, t2 = _normaliser(x), _normaliser(uv)
    xh = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) @ t3.T
    uh = torch.cat([uv, torch.ones(len(x), 1, dtype=x.dtype)], 1) @ t2.T
    zero = torch.zeros_like(xh)
    rows = torch.cat([torch.cat([xh, zero, -uh[:, :1] * xh], 1),
                      torch.cat([zero, xh, -uh[:, 1:2] * xh], 1)])
    p = torch.linalg.svd(rows).Vh[-1].reshape(3, 4)
    p = torch.linalg.inv(t2) @ p @ t3
    if torch.det(p[:, :3]) < 0:          # P is defined up to sign: make det(K R) > 0
        p = -p
    # RQ of M = K R through QR of the row-reversed M^T
    flip = torch.eye(3, dtype=p.dtype).flip(0)
    q, r = torch.linalg.qr((flip @ p[:, :3]).T)
    k, rot = flip @ r.T @ flip, flip @ q.T
    d = torch.diag(torch.sign(torch.diagonal(k)))
    k, rot = k @ d, d @ rot
    try:          # a singular K: the points did not pin the camera down
        t = torch.linalg.solve(k, p[:, 3])
        k = k / k[2, 2]
        proj = (x @ rot.T + t) @ k.T
        err = (proj[:, :2] / proj[:, 2:] - uv).norm(dim=-1).mean()
    except torch.linalg.LinAlgError:
        err = torch.tensor(float("inf"))
    if not err <= max_reprojection_px:
        raise LoraKitError(f"no pinhole camera fits these world points (reprojection error "
                           f"{float(err):.2f} px): are they all on one plane? Pass the poses")
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3], pose[:3, 3] = rot.T, -rot.T @ t
    return pose.to(pts.dtype), k.to(pts.dtype)
