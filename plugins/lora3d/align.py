"""Global alignment of pairwise pointmaps (DUSt3R's objective), robust or plain.

Every backend minimises the objective of DUSt3R's `PointCloudOptimizer`:

    sum_e  mean_pixels  w_e,v * || X_v - (s_e R_e P_e,v + t_e) ||,   v in {i, j} of edge e

over per-image depth maps, focals and camera-to-world poses (which make the global
pointmaps X_v) and one similarity transform per edge, with the mean log edge scale
pinned (`base_scale`), Adam with a cosine schedule, after a minimum-spanning-tree
initialisation. A backend is an `Aligner` (aligners.py); `global_align` drives any of
them the same way:

- 'native': `NativeAligner`, that objective in plain torch, so that lorakit works where
  torchvision does not import beside torch (PyPI's CPU torch).
- 'upstream': `UpstreamAligner`, mini-dust3r's `cloud_opt.PointCloudOptimizer` itself,
  whose per-pixel weights live in the buffers `_weight_i` / `_weight_j`. mini-dust3r's
  `cloud_opt` imports torchvision.
- 'auto' (default): upstream when `mini_dust3r.cloud_opt` imports, native when that
  import raises ImportError (any other error is a broken install and is raised). The
  result's `backend` says which one ran.

`robust_alignment` is LoRA3D's loop around it: align -> re-weight -> align ... then the
pseudo-label masks (the re-weighting itself is in reweight.py).
"""
from __future__ import annotations

import importlib
import math
import warnings

import torch

from lorakit.errors import LoraKitError

from .aligners import BACKENDS, Aligner
from .pairs import AlignmentError, AlignmentResult, CalibrationTargets, PairPredictions
from .reweight import image_confidence, reweight, select_pseudo_labels


def upstream_import_error() -> ImportError | None:
    """None when mini-dust3r's cloud_opt imports, else its ImportError."""
    try:
        importlib.import_module("mini_dust3r.cloud_opt")
    except ImportError as err:
        return err
    return None


def upstream_available() -> bool:
    return upstream_import_error() is None


def resolve_backend(backend: str) -> str:
    """'native' or 'upstream' for a requested backend ('auto': upstream if it imports)."""
    if backend not in ("auto", *BACKENDS):
        raise LoraKitError(f"aligner backend must be 'auto', 'native' or 'upstream', "
                           f"got {backend!r}")
    err = upstream_import_error() if backend in ("auto", "upstream") else None
    if backend == "auto":
        return "native" if err is not None else "upstream"
    if err is not None:
        raise LoraKitError(f"aligner backend 'upstream' needs mini_dust3r.cloud_opt, which "
                           f"does not import ({err}): it imports torchvision, so install a "
                           "torch/torchvision pair that import together, or use backend "
                           "'native'")
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


def _initialised(cls, preds: PairPredictions, init: str, base_scale: float,
                 weights) -> tuple[Aligner, str, list[str]]:
    """A new aligner after `init`; a failed 'mst' falls back to 'random' and says so."""
    if init not in ("mst", "random"):
        raise LoraKitError(f"alignment init must be 'mst' or 'random', got {init!r}")
    aligner = cls(preds, base_scale=base_scale, weights=weights)
    try:
        try:
            aligner.initialise(init)
        except (torch.linalg.LinAlgError, ValueError, RuntimeError) as err:
            raise AlignmentError(f"init {init!r}", f"{type(err).__name__}: {err}") from None
        return aligner, init, []
    except AlignmentError as err:
        if init != "mst":
            raise
        note = f"init 'mst' failed ({err}); fell back to init 'random'"
        warnings.warn("lora3d: " + note, stacklevel=3)
        aligner = cls(preds, base_scale=base_scale, weights=weights)
        aligner.initialise("random")
        return aligner, "random (fallback from mst)", [note]


def global_align(preds: PairPredictions, niter: int = 300, lr: float = 0.01,
                 init: str = "mst", backend: str = "auto", base_scale: float = 0.5,
                 weights: tuple[torch.Tensor, torch.Tensor] | None = None,
                 warm_start: Aligner | None = None, stage: str = "global alignment",
                 verbose: bool = False) -> tuple[AlignmentResult, Aligner]:
    """Align once; returns the result and the aligner (to warm-start the next round)."""
    if warm_start is None:
        backend = resolve_backend(backend)
        aligner, used, notes = _initialised(BACKENDS[backend], preds, init, base_scale,
                                            weights)
    else:
        aligner, used, notes = warm_start, "warm start", []
        backend = aligner.name
        if weights is not None:
            aligner.set_weights(*weights)
    notes = notes + aligner.notes
    aligner.notes = []
    with torch.enable_grad():
        history = _optimise(list(aligner.parameters()), aligner.loss, niter, lr, stage) \
            if niter > 0 else []
    with torch.no_grad():
        poses, focals, depths, pts = (t.detach() for t in aligner.geometry())
        ri, rj = aligner.residuals()
        loss = float(aligner.loss())
    for name, t in (("poses", poses), ("focals", focals), ("depths", depths), ("points", pts)):
        if not torch.isfinite(t).all():
            raise AlignmentError(stage, f"non-finite {name} after {niter} iterations")
    ei = torch.tensor([i for i, _ in preds.edges])
    ej = torch.tensor([j for _, j in preds.edges])
    d = depths.clamp(min=1e-8)
    result = AlignmentResult(poses, focals, depths, pts, loss, used, (ri / d[ei]).detach(),
                             (rj / d[ej]).detach(), backend, history, notes)
    if verbose:
        print(f"lora3d: {stage}: loss {loss:.4f} ({backend}, init {used})")
    return result, aligner


def robust_alignment(preds: PairPredictions, rounds: int = 2, niter: int = 300,
                     niter_round: int | None = None, lr: float = 0.01, init: str = "mst",
                     backend: str = "auto", mu_factor: float = 1.0,
                     threshold: float | None = None, keep_fraction: float = 0.5,
                     verbose: bool = False) -> CalibrationTargets:
    """align -> re-weight -> align ... (`rounds` re-weightings), then pseudo-label masks.

    rounds=0 is the ablation without re-weighting (and plain DUSt3R alignment): masks from
    the raw confidence (the same mean over edges, with k = 1).
    """
    if rounds < 0:
        raise LoraKitError(f"re-weighting rounds must be >= 0, got {rounds}")
    n = preds.n_images
    raw = image_confidence(preds.edges, preds.conf_i, preds.conf_j, n)
    result, aligner = global_align(preds, niter, lr, init, backend, stage="alignment round 0",
                                   verbose=verbose)
    log = [{"round": 0, "loss": result.loss, "init": result.init, "backend": result.backend}]
    notes = list(result.notes)
    cal = raw
    for k in range(1, rounds + 1):
        wi, wj, _, _ = reweight(preds, result, mu_factor)
        result, aligner = global_align(preds, niter_round or max(niter // 2, 1), lr,
                                       weights=(wi, wj), warm_start=aligner,
                                       stage=f"alignment round {k}", verbose=verbose)
        log.append({"round": k, "loss": result.loss})
        notes += result.notes
    result.notes = notes
    if rounds > 0:
        _, _, ci, cj = reweight(preds, result, mu_factor)
        cal = image_confidence(preds.edges, ci, cj, n)
    masks = select_pseudo_labels(cal, threshold, keep_fraction)
    return CalibrationTargets(result, raw, cal, masks, log)
