"""Target shifts for self-calibration: what changes between pretraining and a user's scene.

Self-calibration (LoRA3D) distils the multi-view consensus of a scene back into the
model, so it can only fix errors that differ from view to view while matching still
works. The shifts here are built for that, each a function on `SceneViews`:

- per-frame corruptions on a random subset of frames, the others clean: glare (an
  additive bright bloom), occluding blotches (opaque random-colour ellipses), heavy
  sensor noise, motion blur along a random direction (`corrupt_frames`);
- mild global degradation: low light with sensor noise, then blur, at strength <= 0.25
  on every frame (`mild_global`);
- a geometry shift: each camera rolled about its optical axis (15-35°) and pitched about
  its x axis (5-15°), one sign per scene, and a focal length outside pretraining's 50-75°
  field of view (35-45° or 85-95°), re-rendered so the ground truth follows
  (`geometry_shift_params`, `tilt_poses`, `rerender`).

`target_scene(shift, seed)` gives one scene under a named shift (`SHIFTS`), with ground
truth; the same seed gives the same room and camera path under every shift. Seed sets:
settings are chosen on `VALIDATION_SEEDS` only, the benchmark reports `TEST_SEEDS`, the
gate tests use `GATE_SEEDS` (partners from `UNRELATED_SEEDS`): disjoint from each other
and below `scenes.HELD_OUT_SEEDS` (pretraining's scenes use seeds at or above it).
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from .scenes import (
    HELD_OUT_SEEDS,
    SceneViews,
    axis_rotation,
    camera_path,
    degrade,
    make_scene,
    render_views,
)

VALIDATION_SEEDS = tuple(range(3000, 3016))
TEST_SEEDS = tuple(range(4000, 4016))
GATE_SEEDS = tuple(range(5000, 5016))
UNRELATED_SEEDS = tuple(range(6000, 6016))   # partners from other scenes, for the gate
SHIFTS = ("clean", "frame_corruption", "mild_global", "geometry")
CORRUPTIONS = ("glare", "blotches", "noise", "motion_blur")
NARROW_FOV, WIDE_FOV = (35.0, 45.0), (85.0, 95.0)   # pretraining: 50-75°
MAX_GLOBAL_STRENGTH = 0.25


# --- per-frame corruptions -----------------------------------------------------------------
def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    v, u = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                          torch.arange(size, dtype=torch.float32), indexing="ij")
    return u, v


def glare(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """An additive bright bloom: a warm-white Gaussian blob a quarter to half the frame wide."""
    h = img.shape[0]
    u, v = _grid(h)
    cu, cv = _uniform(g, 0.15, 0.85) * h, _uniform(g, 0.15, 0.85) * h
    sigma = _uniform(g, 0.12, 0.25) * h
    blob = torch.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * sigma ** 2))
    tint = torch.tensor([1.0, 0.95, 0.8])
    return (img + _uniform(g, 0.7, 1.1) * blob[..., None] * tint).clamp(0, 1)


def blotches(img: torch.Tensor, g: torch.Generator, count: tuple[int, int] = (2, 4)) -> torch.Tensor:
    """Opaque ellipses of random colour (dirt, a finger, a passer-by), 8-22 % of the width."""
    h = img.shape[0]
    u, v = _grid(h)
    out = img.clone()
    n = count[0] + int(torch.randint(count[1] - count[0] + 1, (1,), generator=g))
    for _ in range(n):
        cu, cv = _uniform(g, 0.1, 0.9) * h, _uniform(g, 0.1, 0.9) * h
        a, b = _uniform(g, 0.08, 0.22) * h, _uniform(g, 0.05, 0.15) * h
        t = _uniform(g, 0, math.pi)
        du, dv = u - cu, v - cv
        x, y = du * math.cos(t) + dv * math.sin(t), -du * math.sin(t) + dv * math.cos(t)
        inside = (x / a) ** 2 + (y / b) ** 2 <= 1
        out[inside] = torch.rand(3, generator=g)
    return out


def heavy_noise(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Gaussian sensor noise with sigma 0.08-0.15 of the full range, per channel (heavier
    buries a 64 px frame's texture altogether)."""
    sigma = _uniform(g, 0.08, 0.15)
    return (img + sigma * torch.randn(img.shape, generator=g)).clamp(0, 1)


def motion_blur(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A box kernel 7-11 px long along a random direction (the camera moved while exposing)."""
    length = 7 + 2 * int(torch.randint(3, (1,), generator=g))
    angle = _uniform(g, 0, math.pi)
    r = length // 2
    k = torch.zeros(length, length)
    for s in torch.linspace(-r, r, 4 * length):
        k[int(round(r + float(s) * math.sin(angle))), int(round(r + float(s) * math.cos(angle)))] = 1
    k = k / k.sum()
    t = torch.nn.functional.pad(img.permute(2, 0, 1)[None], (r, r, r, r), mode="replicate")
    t = torch.nn.functional.conv2d(t, k.expand(3, 1, length, length), groups=3)
    return t[0].permute(1, 2, 0).clamp(0, 1)


CORRUPT = {"glare": glare, "blotches": blotches, "noise": heavy_noise,
           "motion_blur": motion_blur}


def corrupt_frames(views: SceneViews, seed: int, fraction: float = 1 / 3,
                   kinds: tuple[str, ...] = CORRUPTIONS) -> SceneViews:
    """Corrupt a random subset of the frames (at least one, never all), one corruption each.

    `meta["corrupted"]` maps the corrupted frames to their corruption; the other frames,
    and the ground truth, are left as they were.
    """
    unknown = [k for k in kinds if k not in CORRUPT]
    if unknown:
        raise ValueError(f"unknown corruption(s) {unknown}; known: {CORRUPTIONS}")
    n = views.images.shape[0]
    g = torch.Generator().manual_seed(int(seed) + 15485863)
    count = min(max(1, round(fraction * n)), n - 1) if n > 1 else 1
    frames = sorted(int(i) for i in torch.randperm(n, generator=g)[:count])
    images = views.images.clone()
    done = {}
    for i in frames:
        kind = kinds[int(torch.randint(len(kinds), (1,), generator=g))]
        images[i] = CORRUPT[kind](images[i], g)
        done[i] = kind
    return replace(views, images=images, meta={**views.meta, "corrupted": done})


# --- mild global degradation -------------------------------------------------------------------
def mild_global(views: SceneViews, seed: int, strength: float = 0.2) -> SceneViews:
    """Low light with Poisson-Gaussian noise, then Gaussian blur, on every frame."""
    if not 0 < strength <= MAX_GLOBAL_STRENGTH:
        raise ValueError(f"mild global degradation takes strength in (0, "
                         f"{MAX_GLOBAL_STRENGTH}], got {strength}")
    g = torch.Generator().manual_seed(int(seed) + 32452843)
    images = torch.stack([degrade(degrade(img, "low_light", g, strength), "blur", g, strength)
                          for img in views.images])
    return replace(views, images=images,
                   meta={**views.meta, "degradation": ["low_light", "blur"],
                         "strength": strength})


# --- the geometry shift ---------------------------------------------------------------------------
def tilt_poses(poses: torch.Tensor, roll_deg, pitch_deg) -> torch.Tensor:
    """Each camera-to-world pose rotated about its own optical (z) axis by roll, then its
    own x axis by pitch; the camera centres stay where they were."""
    out = poses.clone()
    n = poses.shape[0]
    roll = torch.as_tensor(roll_deg, dtype=torch.float32).expand(n)
    pitch = torch.as_tensor(pitch_deg, dtype=torch.float32).expand(n)
    for k in range(n):
        local = axis_rotation(2, math.radians(float(roll[k]))) @ axis_rotation(
            0, math.radians(float(pitch[k])))
        out[k, :3, :3] = poses[k, :3, :3] @ local
    return out


def rerender(scene, poses: torch.Tensor, fovs, size: int, seed: int = 0) -> SceneViews:
    """Render each pose with its own field of view (render_views takes one per call)."""
    fovs = [float(f) for f in torch.as_tensor(fovs, dtype=torch.float32).expand(len(poses))]
    parts = [render_views(scene, poses[k:k + 1], size, fovs[k], "none", seed)
             for k in range(len(poses))]
    cat = {f: torch.cat([getattr(p, f) for p in parts])
           for f in ("images", "clean", "depth", "pts3d", "valid", "K", "poses")}
    return SceneViews(**cat, meta={**parts[0].meta, "fov_deg": fovs})


def geometry_shift_params(seed: int, n_views: int) -> dict:
    """A camera held tilted: roll 15-35° and pitch 5-15° per view, each with one sign for
    the scene (so neighbouring views differ by at most 20° of roll and 10° of pitch:
    matching stays possible), and one focal for the scene's camera, narrow (35-45°) or
    wide (85-95°) at random."""
    g = torch.Generator().manual_seed(int(seed) + 49979687)

    def signed(lo, hi):
        sign = 1 if torch.rand(1, generator=g) < 0.5 else -1
        return [sign * _uniform(g, lo, hi) for _ in range(n_views)]
    roll, pitch = signed(15, 35), signed(5, 15)
    fov = _uniform(g, *(NARROW_FOV if torch.rand(1, generator=g) < 0.5 else WIDE_FOV))
    return {"roll_deg": roll, "pitch_deg": pitch, "fov_deg": fov}


# --- named target scenes ----------------------------------------------------------------------------
def target_scene(shift: str, seed: int, n_views: int = 6, size: int = 64,
                 overlap: float = 0.75, styles: tuple[str, ...] | None = None) -> SceneViews:
    """One held-out scene (room and camera path from `seed`) under the named shift.

    `styles`: the texture styles the room draws from (None: make_scene's default, the
    pretraining styles)."""
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; known: {SHIFTS}")
    if not 0 <= seed < HELD_OUT_SEEDS:
        raise ValueError(f"target-scene seed {seed} is not held out: pretraining uses "
                         f"seeds >= {HELD_OUT_SEEDS}")
    scene = make_scene(seed) if styles is None else make_scene(seed, styles=tuple(styles))
    poses = camera_path(scene, n_views, overlap=overlap, seed=seed)
    if shift == "geometry":
        p = geometry_shift_params(seed, n_views)
        views = rerender(scene, tilt_poses(poses, p["roll_deg"], p["pitch_deg"]),
                         p["fov_deg"], size, seed)
        views.meta.update(roll_deg=p["roll_deg"], pitch_deg=p["pitch_deg"])
    else:
        views = render_views(scene, poses, size, 60.0, "none", seed)
    if shift == "frame_corruption":
        views = corrupt_frames(views, seed)
    elif shift == "mild_global":
        views = mild_global(views, seed)
    views.meta.update(shift=shift, seed=seed, overlap=overlap)
    return views

