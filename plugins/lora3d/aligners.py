"""The backends of global alignment: one `Aligner` protocol, two implementations.

Both minimise DUSt3R's `PointCloudOptimizer` objective (see align.py) over per-image
depths, focals and poses plus one similarity transform per edge:

- `NativeAligner`: that objective in plain torch (an `nn.Module` whose parameters are
  the unknowns), with DUSt3R's minimum-spanning-tree initialisation, so lorakit works
  where torchvision does not import beside torch (PyPI's CPU torch).
- `UpstreamAligner`: mini-dust3r's `cloud_opt.PointCloudOptimizer` itself, whose per-pixel
  weights live in the buffers `_weight_i` / `_weight_j`.

`global_align` (align.py) drives either through the protocol and never asks which one it
holds. An initialisation that fails raises ValueError; the driver turns it into an
`AlignmentError` and falls back to 'random'.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from lorakit.domains.geometry.transforms import (
    apply,
    estimate_focal,
    pixel_grid,
    quat_to_rotmat,
    rotmat_to_quat,
    similarity,
)
from lorakit.errors import LoraKitError

if TYPE_CHECKING:
    from .pairs import PairPredictions


class Aligner(Protocol):
    """A backend of `global_align`: the objective's parameters and what they mean."""
    name: str                 # the backend's name: 'native' or 'upstream'
    notes: list[str]          # what the initialisation had to work around

    def initialise(self, how: str) -> None:
        """'mst' (raise ValueError when it fails: global_align falls back) or 'random'."""

    def set_weights(self, wi: torch.Tensor, wj: torch.Tensor) -> None:
        """Per-pixel weights (E,H,W) of each edge's two views."""

    def parameters(self) -> Iterable[torch.Tensor]:
        """The tensors Adam optimises."""

    def loss(self) -> torch.Tensor:
        """The objective, differentiable in parameters()."""

    def residuals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(E,H,W) distances of each edge's aligned views to the global pointmaps."""

    def geometry(self) -> tuple[torch.Tensor, ...]:
        """(poses (n,4,4), focals (n,), depths (n,H,W), pts3d (n,H,W,3))."""


class NativeAligner(nn.Module):
    """DUSt3R's PointCloudOptimizer objective in plain torch (see the module docstring)."""
    name = "native"

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
        self.notes: list[str] = []

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

    # the Aligner protocol
    def loss(self) -> torch.Tensor:
        return self()

    @torch.no_grad()
    def set_weights(self, wi: torch.Tensor, wj: torch.Tensor) -> None:
        self._weight_i.copy_(wi)
        self._weight_j.copy_(wj)

    def geometry(self) -> tuple[torch.Tensor, ...]:
        return self.poses(), self.focals(), self.depths(), self.pts3d()

    def initialise(self, how: str) -> None:
        self.init_mst() if how == "mst" else self.init_random()

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
        own = [None] * n
        for e, (i, _j) in enumerate(self.edges):
            c = float(p.conf_i[e].mean())
            if own[i] is None or c > own[i][0]:
                own[i] = (c, e)
        world = [None] * n
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
                s, r, t = similarity(src_known.reshape(-1, 3), world[known].reshape(-1, 3), wk)
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
            raise ValueError(f"NaN focal (estimates {focals.tolist()})")
        if not ok.all():
            bad = [k for k in range(n) if not ok[k]]
            self.notes.append(f"init 'mst': focal of images {bad} unusable "
                                   f"({[round(float(f), 2) for f in focals[~ok]]}); "
                                   "set to the median of the others")
            focals = torch.where(ok, focals, focals[ok].median())
        for k in range(n):
            cam, w = cams[k]
            f = focals[k]
            s, r, t = similarity(cam.reshape(-1, 3), world[k].reshape(-1, 3), w.flatten())
            depth = (s * cam[..., 2]).clamp(min=1e-4)
            self.im_log_focal[k] = torch.log(f)
            self.im_log_depth[k] = depth.log()
            self.im_quats[k] = rotmat_to_quat(r)
            self.im_trans[k] = t
        x = self.pts3d()
        log_s = []
        for e, (i, j) in enumerate(self.edges):
            src = torch.cat([p.pts_i[e].reshape(-1, 3), p.pts_j[e].reshape(-1, 3)])
            dst = torch.cat([x[i].reshape(-1, 3), x[j].reshape(-1, 3)])
            ww = torch.cat([ew[e].flatten(), self._weight_j[e].clamp(min=0).flatten()])
            s, r, t = similarity(src, dst, ww)
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
            raise ValueError("NaN focal")
        for name, prm in self.named_parameters():
            if not torch.isfinite(prm).all():
                raise ValueError(f"non-finite {name}")

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


class UpstreamAligner:
    """mini-dust3r's PointCloudOptimizer as an Aligner."""
    name = "upstream"

    def __init__(self, preds: PairPredictions, base_scale: float = 0.5,
                 weights: tuple[torch.Tensor, torch.Tensor] | None = None,
                 min_conf_thr: float | None = None) -> None:
        from mini_dust3r.cloud_opt.optimizer import PointCloudOptimizer
        preds.check()
        self.preds = preds
        self.edges = preds.edges
        self.notes: list[str] = []
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

    def initialise(self, how: str) -> None:
        """'random' keeps upstream's own starting values, as its global_aligner does."""
        from mini_dust3r.cloud_opt.init_im_poses import init_minimum_spanning_tree
        if how == "mst":
            init_minimum_spanning_tree(self.net)
            if not torch.isfinite(self.net.get_focals()).all():
                raise ValueError("NaN focal")

    def parameters(self) -> list[torch.Tensor]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def loss(self) -> torch.Tensor:
        return self.net()

    @torch.no_grad()
    def residuals(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack(self.net.get_pts3d())
        pw = self.net.get_pw_poses()
        adapt = self.net.get_adaptors().unsqueeze(1)
        ai = torch.stack([apply(pw[e], adapt[e] * self.preds.pts_i[e])
                          for e in range(len(self.edges))])
        aj = torch.stack([apply(pw[e], adapt[e] * self.preds.pts_j[e])
                          for e in range(len(self.edges))])
        ei = torch.tensor([i for i, _ in self.edges])
        ej = torch.tensor([j for _, j in self.edges])
        return (x[ei] - ai).norm(dim=-1), (x[ej] - aj).norm(dim=-1)

    @torch.no_grad()
    def geometry(self) -> tuple[torch.Tensor, ...]:
        return (self.net.get_im_poses().detach(), self.net.get_focals().detach().flatten(),
                torch.stack(list(self.net.get_depthmaps())).detach(),
                torch.stack(self.net.get_pts3d()).detach())


BACKENDS: dict[str, type] = {"native": NativeAligner, "upstream": UpstreamAligner}
