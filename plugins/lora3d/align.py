"""Global alignment of pairwise pointmaps, with LoRA3D's confidence re-weighting.

Two backends minimise the same objective as DUSt3R's `PointCloudOptimizer`:

    sum_e  mean_pixels  w_e,v * || X_v - (s_e R_e P_e,v + t_e) ||,   v in {i, j} of edge e

over per-image depth maps, focals and camera-to-world poses (which make the global
pointmaps X_v) and one similarity transform per edge, with the mean log edge scale
pinned (`base_scale`), Adam with a cosine schedule, after a minimum-spanning-tree
initialisation.

- 'upstream': mini-dust3r's `cloud_opt.PointCloudOptimizer` itself. Its per-pixel weights
  live in the buffers `_weight_i` / `_weight_j`, which are rewritten between re-weighting
  rounds. mini-dust3r's `cloud_opt` imports torchvision, so this backend needs a torch /
  torchvision pair that import together (see README).
- 'native': this module's own implementation of that objective in plain torch, so that
  lorakit works where torchvision does not import beside torch (PyPI's CPU torch).
- 'auto' (default): upstream when `mini_dust3r.cloud_opt` imports, else native.

LoRA3D's re-weighting: after an alignment, each pixel's weight becomes
`log(C) * k`, k = (mu / (mu + r))**2, r its alignment residual divided by its depth and
mu a robust residual scale (`mu_factor` x the median residual): the closed-form weight of
a Geman-McClure-type robust kernel. Then the aligner runs again from where it stopped,
with the new weights. The calibrated confidence of a pixel is the mean, over the edges
that see it, of `C * k`; the pseudo-labels are the pixels whose calibrated confidence
passes the threshold (or the top fraction of each image).
"""
from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from lorakit.errors import LoraKitError


class AlignmentError(LoraKitError):
    """Global alignment failed (NaN / divergence); `stage` says where."""

    def __init__(self, stage: str, detail: str) -> None:
        super().__init__(f"global alignment diverged at stage {stage!r}: {detail}")
        self.stage = stage


# --- small geometry helpers -------------------------------------------------------------
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


def weighted_procrustes(src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor,
                        scale: bool = True):
    """s, R, t minimising sum w ||s R src + t - dst||^2 (Umeyama); src, dst (N,3), w (N,)."""
    w = w.clamp(min=0)
    w = w / w.sum().clamp(min=1e-12)
    mu_s = (w[:, None] * src).sum(0)
    mu_d = (w[:, None] * dst).sum(0)
    a, b = src - mu_s, dst - mu_d
    cov = (w[:, None] * b).T @ a
    u, sig, vt = torch.linalg.svd(cov)
    d = torch.ones(3, dtype=src.dtype)
    if torch.det(u @ vt) < 0:
        d[2] = -1
    r = u @ torch.diag(d) @ vt
    var = (w * (a * a).sum(-1)).sum()
    s = ((sig * d).sum() / var.clamp(min=1e-12)) if scale else torch.ones(())
    t = mu_d - s * r @ mu_s
    return s, r, t


def estimate_focal(pts_cam: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Focal (pixels) of a camera-frame pointmap (H,W,3), principal point at the centre."""
    h, wd = pts_cam.shape[:2]
    v, u = torch.meshgrid(torch.arange(h, dtype=pts_cam.dtype),
                          torch.arange(wd, dtype=pts_cam.dtype), indexing="ij")
    z = pts_cam[..., 2]
    ok = (z > 1e-6) & (w > 0)
    xz = torch.where(ok, pts_cam[..., 0] / z.clamp(min=1e-6), torch.zeros_like(z))
    yz = torch.where(ok, pts_cam[..., 1] / z.clamp(min=1e-6), torch.zeros_like(z))
    ww = torch.where(ok, w, torch.zeros_like(w))
    du, dv = u - (wd - 1) / 2, v - (h - 1) / 2
    num = (ww * (du * xz + dv * yz)).sum()
    den = (ww * (xz * xz + yz * yz)).sum()
    return num / den


def pixel_grid(h: int, w: int) -> torch.Tensor:
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                          torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([u - (w - 1) / 2, v - (h - 1) / 2], -1)


def to_frame(pose_c2w: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """World points (...,3) into the frame of a camera-to-world pose (4,4)."""
    r, t = pose_c2w[:3, :3], pose_c2w[:3, 3]
    return (pts - t) @ r


# --- the pairwise predictions -----------------------------------------------------------
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

    def check(self) -> None:
        nodes = sorted({k for e in self.edges for k in e})
        if nodes != list(range(len(nodes))) or len(nodes) < 2:
            raise LoraKitError(f"pair graph must cover images 0..n-1 (n >= 2), got {nodes}")
        for name in ("pts_i", "pts_j", "conf_i", "conf_j"):
            t = getattr(self, name)
            if not torch.isfinite(t).all():
                raise AlignmentError("pairwise inference", f"{name} holds NaN or inf")


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
    history: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- the native optimiser -------------------------------------------------------------------
class NativeAligner(nn.Module):
    """DUSt3R's PointCloudOptimizer objective in plain torch (see the module docstring)."""

    def __init__(self, preds: PairPredictions, base_scale: float = 0.5,
                 weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        preds.check()
        self.preds = preds
        self.edges = preds.edges
        n, (h, w) = preds.n_images, preds.shape
        self.n, self.h, self.w = n, h, w
        self.base_scale = base_scale
        self.register_buffer("_grid", pixel_grid(h, w))
        wi, wj = weights if weights is not None else (preds.conf_i.log(), preds.conf_j.log())
        self.register_buffer("_weight_i", wi.clone())
        self.register_buffer("_weight_j", wj.clone())
        self.im_quats = nn.Parameter(torch.tensor([0.0, 0, 0, 1]).repeat(n, 1))
        self.im_trans = nn.Parameter(torch.zeros(n, 3))
        self.im_log_depth = nn.Parameter(torch.zeros(n, h, w))
        self.im_log_focal = nn.Parameter(torch.full((n,), math.log(max(h, w))))
        e = len(self.edges)
        self.pw_quats = nn.Parameter(torch.tensor([0.0, 0, 0, 1]).repeat(e, 1))
        self.pw_trans = nn.Parameter(torch.zeros(e, 3))
        self.pw_log_scale = nn.Parameter(torch.full((e,), math.log(base_scale)))
        self.register_buffer("_ei", torch.tensor([i for i, _ in self.edges]))
        self.register_buffer("_ej", torch.tensor([j for _, j in self.edges]))
        self.init_notes: list[str] = []

    # parameters to geometry
    def poses(self) -> torch.Tensor:
        p = torch.eye(4).repeat(self.n, 1, 1)
        p[:, :3, :3] = quat_to_rotmat(self.im_quats)
        p[:, :3, 3] = self.im_trans
        return p

    def focals(self) -> torch.Tensor:
        return self.im_log_focal.exp()

    def depths(self) -> torch.Tensor:
        return self.im_log_depth.exp()

    def pw_scales(self) -> torch.Tensor:
        ls = self.pw_log_scale
        return (ls - ls.mean() + math.log(self.base_scale)).exp()

    def pts3d(self) -> torch.Tensor:
        rays = torch.cat([self._grid / self.focals()[:, None, None, None],
                          torch.ones(self.n, self.h, self.w, 1)], -1)
        cam = rays * self.depths()[..., None]
        r = quat_to_rotmat(self.im_quats)
        return torch.einsum("nij,nhwj->nhwi", r, cam) + self.im_trans[:, None, None, :]

    def aligned_preds(self):
        r = quat_to_rotmat(self.pw_quats)
        s = self.pw_scales()[:, None, None, None]
        t = self.pw_trans[:, None, None, :]
        ai = s * torch.einsum("eij,ehwj->ehwi", r, self.preds.pts_i) + t
        aj = s * torch.einsum("eij,ehwj->ehwi", r, self.preds.pts_j) + t
        return ai, aj

    def residuals(self):
        x = self.pts3d()
        ai, aj = self.aligned_preds()
        return (x[self._ei] - ai).norm(dim=-1), (x[self._ej] - aj).norm(dim=-1)

    def forward(self) -> torch.Tensor:
        ri, rj = self.residuals()
        li = (ri * self._weight_i).flatten(1).mean(1)
        lj = (rj * self._weight_j).flatten(1).mean(1)
        return (li + lj).sum() / len(self.edges)

    # initialisation
    @torch.no_grad()
    def init_mst(self) -> None:
        """Minimum spanning tree (on edge confidence) chaining of pairwise pointmaps."""
        p = self.preds
        n, ew = self.n, self._weight_i.clamp(min=0)
        score = {}
        for e, (i, j) in enumerate(self.edges):
            s = float(p.conf_i[e].mean() * p.conf_j[e].mean())
            key = (min(i, j), max(i, j))
            if s > score.get(key, (-1.0, -1))[0]:
                score[key] = (s, e)
        # own-frame pointmap of each image: the most confident edge where it comes first
        own, own_w = [None] * n, [None] * n
        for e, (i, _j) in enumerate(self.edges):
            c = float(p.conf_i[e].mean())
            if own[i] is None or c > own[i][0]:
                own[i] = (c, e)
        world = [None] * n
        done = {0}
        first = own[0][1] if own[0] else next(e for e, (i, j) in enumerate(self.edges)
                                                if 0 in (i, j))
        i0, j0 = self.edges[first]
        world[i0], world[j0] = p.pts_i[first].clone(), p.pts_j[first].clone()
        done = {i0, j0}
        order = sorted(score.items(), key=lambda kv: -kv[1][0])
        while len(done) < n:
            progress = False
            for (a, b), (_, e) in order:
                if (a in done) == (b in done):
                    continue
                i, j = self.edges[e]
                known, new = (i, j) if i in done else (j, i)
                src_known = p.pts_i[e] if known == i else p.pts_j[e]
                src_new = p.pts_j[e] if known == i else p.pts_i[e]
                wk = (p.conf_i[e] if known == i else p.conf_j[e]).log().flatten()
                s, r, t = weighted_procrustes(src_known.reshape(-1, 3),
                                              world[known].reshape(-1, 3), wk)
                world[new] = s * src_new @ r.T + t
                done.add(new)
                progress = True
                break
            if not progress:
                raise LoraKitError("the pair graph is not connected: every image needs a "
                                   "path of pairs to every other")
        # per image: focal from its own-frame pointmap, pose and depth by Procrustes
        cams = []
        for k in range(n):
            e = own[k][1] if own[k] else None
            if e is None:      # the image only ever comes second: use it from any edge
                e = next(x for x, (i, j) in enumerate(self.edges) if j == k)
                cams.append((p.pts_j[e], p.conf_j[e].log()))
            else:
                cams.append((p.pts_i[e], p.conf_i[e].log()))
        size = max(self.h, self.w)
        focals = torch.stack([estimate_focal(c, w) for c, w in cams])
        ok = torch.isfinite(focals) & (focals > 0.1 * size) & (focals < 20 * size)
        if not ok.any():
            raise AlignmentError("init 'mst'", f"NaN focal (estimates {focals.tolist()})")
        if not ok.all():
            bad = [k for k in range(n) if not ok[k]]
            self.init_notes.append(f"init 'mst': focal of images {bad} unusable "
                                   f"({[round(float(f), 2) for f in focals[~ok]]}); "
                                   "set to the median of the others")
            focals = torch.where(ok, focals, focals[ok].median())
        for k in range(n):
            cam, w = cams[k]
            f = focals[k]
            s, r, t = weighted_procrustes(cam.reshape(-1, 3), world[k].reshape(-1, 3),
                                          w.flatten())
            depth = (s * cam[..., 2]).clamp(min=1e-4)
            self.im_log_focal[k] = torch.log(f)
            self.im_log_depth[k] = depth.log()
            self.im_quats[k] = rotmat_to_quat(r)
            self.im_trans[k] = t
            own_w[k] = w
        x = self.pts3d()
        log_s = []
        for e, (i, j) in enumerate(self.edges):
            src = torch.cat([p.pts_i[e].reshape(-1, 3), p.pts_j[e].reshape(-1, 3)])
            dst = torch.cat([x[i].reshape(-1, 3), x[j].reshape(-1, 3)])
            ww = torch.cat([ew[e].flatten(), self._weight_j[e].clamp(min=0).flatten()])
            s, r, t = weighted_procrustes(src, dst, ww)
            self.pw_quats[e] = rotmat_to_quat(r)
            self.pw_trans[e] = t
            log_s.append(torch.log(s))
        log_s = torch.stack(log_s)
        # rescale the world so that the mean log edge scale is log(base_scale)
        factor = math.exp(math.log(self.base_scale) - float(log_s.mean()))
        self.pw_log_scale.copy_(log_s + math.log(factor))
        self.pw_trans.mul_(factor)
        self.im_trans.mul_(factor)
        self.im_log_depth.add_(math.log(factor))
        if not torch.isfinite(self.im_log_focal).all():
            raise AlignmentError("init 'mst'", "NaN focal")
        for name, prm in self.named_parameters():
            if not torch.isfinite(prm).all():
                raise AlignmentError("init 'mst'", f"non-finite {name}")

    @torch.no_grad()
    def init_random(self, seed: int = 0) -> None:
        """Identity poses (slightly perturbed), own-frame depths, focal = image size."""
        g = torch.Generator().manual_seed(seed)
        p = self.preds
        for e, (i, _j) in enumerate(self.edges):
            self.im_log_depth[i] = p.pts_i[e][..., 2].clamp(min=1e-4).log()
        self.im_quats.copy_(torch.tensor([0.0, 0, 0, 1]) + 0.01 * torch.randn(
            self.n, 4, generator=g))
        self.im_trans.copy_(0.01 * torch.randn(self.n, 3, generator=g))
        self.im_log_focal.fill_(math.log(max(self.h, self.w)))


# --- the upstream backend ---------------------------------------------------------------------
def upstream_available() -> bool:
    try:
        importlib.import_module("mini_dust3r.cloud_opt")
        return True
    except Exception:
        return False


class UpstreamAligner:
    """mini-dust3r's PointCloudOptimizer behind the same small interface as NativeAligner."""

    def __init__(self, preds: PairPredictions, base_scale: float = 0.5,
                 weights: tuple[torch.Tensor, torch.Tensor] | None = None,
                 min_conf_thr: float | None = None) -> None:
        from mini_dust3r.cloud_opt.optimizer import PointCloudOptimizer
        preds.check()
        self.preds = preds
        self.edges = preds.edges
        view1 = {"idx": [i for i, _ in preds.edges]}
        view2 = {"idx": [j for _, j in preds.edges]}
        pred1 = {"pts3d": preds.pts_i.clone(), "conf": preds.conf_i.clone()}
        pred2 = {"pts3d_in_other_view": preds.pts_j.clone(), "conf": preds.conf_j.clone()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # upstream's default min_conf_thr=3 masks every pixel of a weak model, whose
            # confidences stay near 1; None uses the median image confidence instead
            if min_conf_thr is None:
                min_conf_thr = float(torch.cat([preds.conf_i.flatten(),
                                                preds.conf_j.flatten()]).median()) * 0.999
            self.net = PointCloudOptimizer(view1, view2, pred1, pred2, base_scale=base_scale,
                                           min_conf_thr=min_conf_thr, verbose=False)
        if weights is not None:
            self.set_weights(*weights)

    @torch.no_grad()
    def set_weights(self, wi: torch.Tensor, wj: torch.Tensor) -> None:
        # the buffers are ParameterStacks of the per-edge maps, flattened and padded
        self.net._weight_i.copy_(wi.reshape(self.net._weight_i.shape))
        self.net._weight_j.copy_(wj.reshape(self.net._weight_j.shape))

    def init(self, how: str) -> None:
        from mini_dust3r.cloud_opt.init_im_poses import init_minimum_spanning_tree
        if how == "mst":
            init_minimum_spanning_tree(self.net)
            focals = self.net.get_focals()
            if not torch.isfinite(focals).all():
                raise AlignmentError("init 'mst'", "NaN focal")

    def parameters(self):
        return [p for p in self.net.parameters() if p.requires_grad]

    def loss(self) -> torch.Tensor:
        return self.net()

    @torch.no_grad()
    def residuals(self):
        x = torch.stack(self.net.get_pts3d())
        pw = self.net.get_pw_poses()
        adapt = self.net.get_adaptors().unsqueeze(1)
        ai = torch.stack([_geotrf(pw[e], adapt[e] * self.preds.pts_i[e])
                          for e in range(len(self.edges))])
        aj = torch.stack([_geotrf(pw[e], adapt[e] * self.preds.pts_j[e])
                          for e in range(len(self.edges))])
        ei = torch.tensor([i for i, _ in self.edges])
        ej = torch.tensor([j for _, j in self.edges])
        return (x[ei] - ai).norm(dim=-1), (x[ej] - aj).norm(dim=-1)

    @torch.no_grad()
    def geometry(self):
        return (self.net.get_im_poses().detach(), self.net.get_focals().detach().flatten(),
                torch.stack(list(self.net.get_depthmaps())).detach(),
                torch.stack(self.net.get_pts3d()).detach())


def _geotrf(m: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    return pts @ m[:3, :3].T + m[:3, 3]


# --- the driver ---------------------------------------------------------------------------------
def resolve_backend(backend: str) -> str:
    if backend not in ("auto", "native", "upstream"):
        raise LoraKitError(f"aligner backend must be 'auto', 'native' or 'upstream', "
                           f"got {backend!r}")
    if backend == "auto":
        return "upstream" if upstream_available() else "native"
    if backend == "upstream" and not upstream_available():
        raise LoraKitError("aligner backend 'upstream' needs mini_dust3r.cloud_opt, which "
                           "imports torchvision: install a torch/torchvision pair that import "
                           "together, or use backend 'native'")
    return backend


def _optimise(params, loss_fn, niter: int, lr: float, stage: str) -> list[float]:
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.9))
    history = []
    for it in range(niter):
        cur = lr * (1e-2 + (1 - 1e-2) * 0.5 * (1 + math.cos(math.pi * it / max(niter, 1))))
        for g in opt.param_groups:
            g["lr"] = cur
        opt.zero_grad()
        loss = loss_fn()
        if not torch.isfinite(loss):
            raise AlignmentError(stage, f"loss became {loss.detach().item()} at iteration {it}")
        loss.backward()
        opt.step()
        history.append(loss.detach().item())
    return history


def global_align(preds: PairPredictions, niter: int = 300, lr: float = 0.01,
                 init: str = "mst", backend: str = "auto", base_scale: float = 0.5,
                 weights: tuple[torch.Tensor, torch.Tensor] | None = None,
                 warm_start: object | None = None, stage: str = "global alignment",
                 verbose: bool = False) -> tuple[AlignmentResult, object]:
    """Align once; returns the result and the aligner (to warm-start the next round)."""
    backend = resolve_backend(backend)
    notes: list[str] = []
    aligner = warm_start
    used = "warm start"
    if aligner is None:
        cls = UpstreamAligner if backend == "upstream" else NativeAligner
        aligner = cls(preds, base_scale=base_scale, weights=weights)
        used = init
        try:
            if init == "mst":
                try:
                    aligner.init_mst() if backend == "native" else aligner.init("mst")
                except (torch.linalg.LinAlgError, ValueError, RuntimeError) as err:
                    if isinstance(err, AlignmentError):
                        raise
                    raise AlignmentError("init 'mst'", f"{type(err).__name__}: {err}") from None
            elif init == "random":
                if backend == "native":
                    aligner.init_random()
            else:
                raise LoraKitError(f"alignment init must be 'mst' or 'random', got {init!r}")
        except AlignmentError as err:
            note = f"init 'mst' failed ({err}); fell back to init 'random'"
            notes.append(note)
            warnings.warn("lora3d: " + note, stacklevel=2)
            aligner = cls(preds, base_scale=base_scale, weights=weights)
            if backend == "native":
                aligner.init_random()
            used = "random (fallback from mst)"
    elif weights is not None:
        if isinstance(aligner, NativeAligner):
            aligner._weight_i.copy_(weights[0])
            aligner._weight_j.copy_(weights[1])
        else:
            aligner.set_weights(*weights)
    if isinstance(aligner, NativeAligner):
        notes.extend(aligner.init_notes)
        aligner.init_notes = []
        params, loss_fn = list(aligner.parameters()), aligner
    else:
        params, loss_fn = aligner.parameters(), aligner.loss
    with torch.enable_grad():
        history = _optimise(params, loss_fn, niter, lr, stage) if niter > 0 else []
    with torch.no_grad():
        if isinstance(aligner, NativeAligner):
            poses, focals = aligner.poses(), aligner.focals()
            depths, pts = aligner.depths(), aligner.pts3d()
            ri, rj = aligner.residuals()
            loss = float(aligner())
        else:
            poses, focals, depths, pts = aligner.geometry()
            ri, rj = aligner.residuals()
            loss = float(aligner.loss())
    for name, t in (("poses", poses), ("focals", focals), ("depths", depths), ("points", pts)):
        if not torch.isfinite(t).all():
            raise AlignmentError(stage, f"non-finite {name} after {niter} iterations")
    ei = torch.tensor([i for i, _ in preds.edges])
    ej = torch.tensor([j for _, j in preds.edges])
    d = depths.detach().clamp(min=1e-8)
    result = AlignmentResult(poses.detach(), focals.detach(), depths.detach(), pts.detach(),
                             loss, used, (ri / d[ei]).detach(), (rj / d[ej]).detach(),
                             history, notes)
    if verbose:
        print(f"lora3d: {stage}: loss {loss:.4f} (init {used})")
    return result, aligner


# --- re-weighting and pseudo-labels ---------------------------------------------------------
def robust_factor(residual_i: torch.Tensor, residual_j: torch.Tensor, mu_factor: float = 1.0):
    """k = (mu / (mu + r))**2 for each edge's views, mu = mu_factor x the median residual.

    LoRA3D (Lu et al., ICLR 2025, its robust global optimisation) re-weights each point's
    confidence C by minimising  w r + mu (sqrt(w) - sqrt(C))**2  over w, whose closed form
    is w = C k: a Geman-McClure-type kernel. r is the residual relative to the pixel's
    depth, so a far wall is not down-weighted for being far.
    """
    r = torch.cat([residual_i.flatten(), residual_j.flatten()])
    mu = (mu_factor * r.median()).clamp(min=1e-8)
    return (mu / (mu + residual_i)) ** 2, (mu / (mu + residual_j)) ** 2


def reweight(preds: PairPredictions, result: AlignmentResult, mu_factor: float = 1.0):
    """LoRA3D's confidence re-weighting from alignment residuals.

    Returns (weight_i, weight_j, calibrated_i, calibrated_j): the aligner's confidence
    buffers log(C) multiplied by k, and the calibrated confidences C k (see robust_factor).
    """
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
            cut = flat.topk(k).values[-1]
            m = c >= cut
        if int(m.sum()) < min_pixels:
            cut = flat.topk(min(min_pixels, flat.numel())).values[-1]
            m = c >= cut
        masks.append(m)
    return torch.stack(masks)


@dataclass
class CalibrationTargets:
    alignment: AlignmentResult
    confidence_before: torch.Tensor   # (n,H,W) raw image confidence
    confidence_after: torch.Tensor    # (n,H,W) calibrated
    masks: torch.Tensor               # (n,H,W) pseudo-label masks
    rounds: list[dict]


def robust_alignment(preds: PairPredictions, rounds: int = 2, niter: int = 300,
                     niter_round: int | None = None, lr: float = 0.01, init: str = "mst",
                     backend: str = "auto", mu_factor: float = 1.0,
                     threshold: float | None = None, keep_fraction: float = 0.5,
                     verbose: bool = False) -> CalibrationTargets:
    """align -> re-weight -> align ... (`rounds` re-weightings), then pseudo-label masks.

    rounds=0 is the ablation without re-weighting: masks from the raw confidence (the
    same mean over edges, with k = 1).
    """
    if rounds < 0:
        raise LoraKitError(f"re-weighting rounds must be >= 0, got {rounds}")
    n = preds.n_images
    raw = image_confidence(preds.edges, preds.conf_i, preds.conf_j, n)
    result, aligner = global_align(preds, niter, lr, init, backend, stage="alignment round 0",
                                   verbose=verbose)
    log = [{"round": 0, "loss": result.loss, "init": result.init}]
    cal = raw
    for k in range(1, rounds + 1):
        wi, wj, _, _ = reweight(preds, result, mu_factor)
        result, aligner = global_align(preds, niter_round or max(niter // 2, 1), lr,
                                       backend=backend, weights=(wi, wj), warm_start=aligner,
                                       stage=f"alignment round {k}", verbose=verbose)
        log.append({"round": k, "loss": result.loss})
    if rounds > 0:
        _, _, ci, cj = reweight(preds, result, mu_factor)
        cal = image_confidence(preds.edges, ci, cj, n)
    masks = select_pseudo_labels(cal, threshold, keep_fraction)
    return CalibrationTargets(result, raw, cal, masks, log)
