"""Procedural indoor scenes rendered by ray casting in torch, with ground-truth geometry.

A `Scene` is a room (the inside of an axis-aligned box: floor, ceiling, four walls)
holding boxes (rotated about the vertical axis), spheres and vertical rectangular
panels. Every surface carries a solid 3-D texture (a function of the world point), so
the same point has the same colour from every view: what multi-view geometry needs.

Conventions (those of DUSt3R): cameras are OpenCV-style (x right, y down, z forward),
`pose` is camera-to-world (4x4), `K` the 3x3 intrinsics in pixels, `depth` the z of the
hit point in the camera frame, `pts3d` the hit point in world coordinates. The world's
up axis is -y (so a camera with identity rotation looks along +z with y pointing down,
as an upright camera would).

Texture styles: 'checker', 'stripes', 'waves', 'gradient' are seen in pretraining;
'cells' (a Worley-noise mosaic with a palette outside the pretraining one) is never seen
in pretraining. Degradations: low light with Poisson-Gaussian sensor noise, Gaussian blur.

The target domain of self-calibration (`make_target_scene`) is a photometric shift: new
rooms (seeds below pretraining's range) in the pretraining styles, under low light +
sensor noise + blur at strength 0.5. There the tiny model is clearly better than a
constant-depth guess and its confidence still ranks its points (something to calibrate);
with the unseen 'cells' style, or from strength ~0.7 up, it is no better than that guess
(and at 1.0 its confidence no longer ranks its points), which leaves nothing to calibrate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

PRETRAIN_STYLES = ("noise", "marble", "cells")
UNSEEN_STYLES = ("checker", "stripes", "waves", "gradient")
STYLES = PRETRAIN_STYLES + UNSEEN_STYLES
NOISE_PERIOD = 32           # lattice cells of the value-noise table (period 32 / freq metres)
HELD_OUT_SEEDS = 1_000_000   # pretraining scenes use seeds >= this, held-out scenes below it
FAR = 1e6


# --- materials -----------------------------------------------------------------------
@dataclass
class Material:
    style: str
    color_a: torch.Tensor          # (3,) in [0, 1]
    color_b: torch.Tensor          # (3,)
    freq: float                    # spatial frequency (cycles per metre)
    direction: torch.Tensor        # (3,) unit vector for stripes / gradients
    phases: torch.Tensor           # (3,) random phases
    seeds: torch.Tensor | None = None    # (n, 3) Worley feature points for 'cells'
    palette: torch.Tensor | None = None  # (n, 3); 'noise' and 'marble': 3 ramp colours
    table: torch.Tensor | None = None    # (2, P, P, P) value-noise lattices ('noise', 'marble')

    def shade(self, p: torch.Tensor) -> torch.Tensor:
        """Albedo (N, 3) at world points p (N, 3)."""
        f = self.freq
        if self.style == "checker":
            idx = torch.floor(p * f + self.phases).sum(-1)
            m = (idx.remainder(2.0))[:, None]
        elif self.style == "stripes":
            m = (0.5 + 0.5 * torch.sin(2 * math.pi * f * (p @ self.direction)
                                       + self.phases[0]))[:, None]
            m = (m > 0.5).float() * 0.8 + 0.2 * m
        elif self.style == "waves":
            q = 2 * math.pi * f * p + self.phases
            m = (0.5 + 0.25 * torch.sin(q[:, 0] + 1.7 * torch.sin(q[:, 1]))
                 + 0.25 * torch.sin(q[:, 2] + 1.3 * torch.cos(q[:, 0])))[:, None]
        elif self.style == "gradient":
            t = (p @ self.direction) * f * 0.5 + self.phases[0]
            m = (t - torch.floor(t))[:, None]
            m = m + 0.15 * torch.sin(6 * math.pi * f * p).sum(-1, keepdim=True) / 3
        elif self.style == "noise":
            m1 = fbm(p, self.table[0], f, self.phases)
            m2 = fbm(p, self.table[1], f * 0.5, self.phases.flip(0))
            mix = self.palette[0] * (1 - m1[:, None]) + self.palette[1] * m1[:, None]
            return (mix * (1 - 0.6 * m2[:, None]) + self.palette[2] * 0.6 * m2[:, None]).clamp(0, 1)
        elif self.style == "marble":
            warp = 4.0 * fbm(p, self.table[0], f, self.phases)
            m = (0.5 + 0.5 * torch.sin(2 * math.pi * f * 0.5 * (p @ self.direction) + 2 * math.pi
                                       * warp))[:, None]
            m2 = fbm(p, self.table[1], 2 * f, self.phases.flip(0))[:, None]
            mix = self.palette[0] * (1 - m) + self.palette[1] * m
            return (mix * (0.75 + 0.5 * (m2 - 0.5))).clamp(0, 1)
        elif self.style == "cells":
            d = torch.cdist(p * f, self.seeds)          # (N, n)
            two = d.topk(2, dim=1, largest=False)
            cell = two.indices[:, 0]
            edge = (two.values[:, 1] - two.values[:, 0] < 0.06).float()[:, None]
            return (self.palette[cell] * (1 - 0.8 * edge)).clamp(0, 1)
        else:
            raise ValueError(f"unknown texture style {self.style!r}; known: {STYLES}")
        m = m.clamp(0, 1)
        return self.color_a * (1 - m) + self.color_b * m


def value_noise(p: torch.Tensor, table: torch.Tensor, freq: float) -> torch.Tensor:
    """Trilinear value noise in [0, 1] at points p (N, 3) from a periodic lattice (P, P, P)."""
    q = p * freq
    cell = torch.floor(q)
    t = q - cell
    t = t * t * (3 - 2 * t)                                     # smoothstep weights
    cell = cell.long()
    size = table.shape[0]
    out = torch.zeros(p.shape[0])
    for corner in range(8):
        offset = torch.tensor([(corner >> k) & 1 for k in range(3)])
        idx = (cell + offset).remainder(size)
        w = torch.where(offset.bool(), t, 1 - t).prod(-1)
        out = out + w * table[idx[:, 0], idx[:, 1], idx[:, 2]]
    return out


def fbm(p: torch.Tensor, table: torch.Tensor, freq: float, offsets: torch.Tensor,
        octaves: int = 3) -> torch.Tensor:
    """Fractal value noise (octaves at doubling frequency), contrast-stretched to [0, 1]:
    aperiodic at any scale a camera sees, so no two patches of a surface look alike."""
    total = torch.zeros(p.shape[0])
    for k in range(octaves):
        total = total + 0.5 ** k * value_noise(p + offsets * (k + 1), table, freq * 2 ** k)
    total = total / sum(0.5 ** k for k in range(octaves))
    return ((total - 0.5) * 2.5 + 0.5).clamp(0, 1)


def random_material(style: str, g: torch.Generator) -> Material:
    def rand(*shape):
        return torch.rand(*shape, generator=g)

    if style in ("noise", "marble"):
        # three ramp colours of random hue and a wide luminance spread
        lum = torch.sort(rand(3)).values * torch.tensor([0.45, 0.8, 1.0]) + \
            torch.tensor([0.05, 0.15, 0.0])
        tint = 0.4 + 0.6 * rand(3, 3)
        palette = (tint / tint.mean(-1, keepdim=True) * lum[:, None]).clamp(0, 1)
        palette = palette[torch.randperm(3, generator=g)]
        d = torch.nn.functional.normalize(torch.randn(3, generator=g), dim=0)
        freq = float(1.0 + 2.0 * rand(1).item())
        return Material(style, palette[0], palette[1], freq, d, rand(3) * 10,
                        palette=palette, table=rand(2, NOISE_PERIOD, NOISE_PERIOD, NOISE_PERIOD))
    if style == "cells":
        # saturated, hue-cycled palette: colours the pretraining palette never uses
        n = 96
        hues = rand(n)
        palette = torch.stack([0.5 + 0.5 * torch.cos(2 * math.pi * (hues + k / 3))
                               for k in range(3)], -1)
        palette = (palette - palette.min(-1, keepdim=True).values)
        palette = palette / palette.max(-1, keepdim=True).values.clamp(min=1e-3)
        seeds = (rand(n, 3) - 0.5) * 2 * 8.0
        return Material(style, palette[0], palette[1], 4.0 + 4.0 * rand(1).item(),
                        torch.tensor([1.0, 0, 0]), rand(3), seeds=seeds, palette=palette)
    # pretraining palette: muted colours with a clear luminance contrast
    base = 0.25 + 0.5 * rand(3)
    a = (base * (0.35 + 0.3 * rand(1))).clamp(0, 1)
    b = (base * 0.5 + 0.5 * (0.6 + 0.4 * rand(3))).clamp(0, 1)
    d = torch.nn.functional.normalize(torch.randn(3, generator=g), dim=0)
    freq = float(0.8 + 2.2 * rand(1).item())
    return Material(style, a, b, freq, d, rand(3) * 10)


# --- primitives ------------------------------------------------------------------------
@dataclass
class Box:
    center: torch.Tensor   # (3,)
    half: torch.Tensor     # (3,) half extents in the box frame
    yaw: float             # rotation about the vertical (y) axis
    material: int
    rot: torch.Tensor | None = None    # a full box-to-world rotation instead of `yaw`

    def rotation(self) -> torch.Tensor:
        return _yaw_matrix(self.yaw) if self.rot is None else self.rot


@dataclass
class Sphere:
    center: torch.Tensor
    radius: float
    material: int


@dataclass
class Panel:
    """A vertical rectangle: centre, yaw of its normal, half width, half height."""
    center: torch.Tensor
    yaw: float
    half_w: float
    half_h: float
    material: int
    rot: torch.Tensor | None = None    # a full rotation (tilted panel) instead of `yaw`

    def rotation(self) -> torch.Tensor:
        return _yaw_matrix(self.yaw) if self.rot is None else self.rot


def random_rotation(g: torch.Generator) -> torch.Tensor:
    """A uniformly random 3-D rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _yaw_matrix(yaw: float) -> torch.Tensor:
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass
class Scene:
    room_min: torch.Tensor
    room_max: torch.Tensor
    materials: list[Material]
    room_materials: list[int]          # 6 faces: -x, +x, -y (ceiling), +y (floor), -z, +z
    boxes: list[Box] = field(default_factory=list)
    spheres: list[Sphere] = field(default_factory=list)
    panels: list[Panel] = field(default_factory=list)
    light: torch.Tensor = field(default_factory=lambda: torch.tensor([0.3, -1.0, 0.2]))
    style: str = "checker"

    @property
    def center(self) -> torch.Tensor:
        return (self.room_min + self.room_max) / 2

    # ray casting --------------------------------------------------------------------
    def cast(self, origins: torch.Tensor, dirs: torch.Tensor):
        """Nearest hit of each ray: t (N,), world point (N,3), normal (N,3), material id (N,)."""
        n = dirs.shape[0]
        best_t = torch.full((n,), FAR)
        normal = torch.zeros(n, 3)
        mat = torch.zeros(n, dtype=torch.long)

        def take(t, nrm, m):
            nonlocal best_t, normal, mat
            better = (t > 1e-4) & (t < best_t)
            best_t = torch.where(better, t, best_t)
            normal = torch.where(better[:, None], nrm, normal)
            mat = torch.where(better, m if torch.is_tensor(m) else torch.full_like(mat, m), mat)

        # the room, seen from inside: exit distance of the slab
        safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
        t_far = torch.where(safe > 0, (self.room_max - origins) / safe,
                            (self.room_min - origins) / safe)
        t_room, axis = t_far.min(dim=1)
        pos_dir = torch.gather(safe, 1, axis[:, None])[:, 0] > 0
        face = axis * 2 + pos_dir.long()                        # -x,+x,-y,+y,-z,+z
        nrm = torch.zeros(n, 3)
        nrm.scatter_(1, axis[:, None], torch.where(pos_dir, -1.0, 1.0)[:, None])
        room_mats = torch.tensor(self.room_materials)[face]
        take(t_room, nrm, room_mats)

        for box in self.boxes:
            r = box.rotation()                                   # box-to-world rotation
            o = (origins - box.center) @ r
            d = dirs @ r
            d = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
            t1 = (-box.half - o) / d
            t2 = (box.half - o) / d
            tnear_ax = torch.minimum(t1, t2)
            tfar = torch.maximum(t1, t2).min(dim=1).values
            tnear, ax = tnear_ax.max(dim=1)
            hit = (tnear < tfar) & (tnear > 1e-4)
            sign = -torch.sign(torch.gather(d, 1, ax[:, None]))
            local_n = torch.zeros(n, 3)
            local_n.scatter_(1, ax[:, None], sign)
            take(torch.where(hit, tnear, torch.full_like(tnear, FAR)), local_n @ r.T,
                 box.material)

        for sph in self.spheres:
            oc = origins - sph.center
            b = (oc * dirs).sum(-1)
            c = (oc * oc).sum(-1) - sph.radius ** 2
            disc = b * b - c
            t = -b - torch.sqrt(disc.clamp(min=0))
            t = torch.where((disc > 0) & (t > 1e-4), t, torch.full_like(t, FAR))
            p = origins + t[:, None] * dirs
            take(t, torch.nn.functional.normalize(p - sph.center, dim=-1), sph.material)

        for pan in self.panels:
            r = pan.rotation()
            nz = r[:, 2]
            denom = dirs @ nz
            denom = torch.where(denom.abs() < 1e-9, torch.full_like(denom, 1e-9), denom)
            t = ((pan.center - origins) @ nz) / denom
            p = origins + t[:, None] * dirs
            local = (p - pan.center) @ r
            inside = (local[:, 0].abs() <= pan.half_w) & (local[:, 1].abs() <= pan.half_h)
            t = torch.where(inside & (t > 1e-4), t, torch.full_like(t, FAR))
            nrm = torch.where((denom < 0)[:, None], nz.expand(n, 3), -nz.expand(n, 3))
            take(t, nrm, pan.material)

        points = origins + best_t[:, None] * dirs
        return best_t, points, normal, mat

    def colors(self, points, normals, mats, view_dirs) -> torch.Tensor:
        albedo = torch.zeros_like(points)
        for i, m in enumerate(self.materials):
            sel = mats == i
            if sel.any():
                albedo[sel] = m.shade(points[sel])
        light = torch.nn.functional.normalize(self.light, dim=0)
        lambert = (normals @ -light).clamp(min=0)
        facing = (normals * -view_dirs).sum(-1).clamp(min=0)
        shade = 0.45 + 0.35 * lambert + 0.2 * facing
        return (albedo * shade[:, None]).clamp(0, 1)


def make_scene(seed: int, style: str | None = None, n_objects: tuple[int, int] = (3, 7),
               styles: tuple[str, ...] = PRETRAIN_STYLES) -> Scene:
    """A random room with objects; `style` fixes the texture style of every surface."""
    g = torch.Generator().manual_seed(int(seed))

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    def pick(seq):
        return seq[int(torch.randint(len(seq), (1,), generator=g))]

    size = torch.tensor([4.0, 2.6, 4.0]) + rand(3) * torch.tensor([4.0, 1.0, 4.0])
    room_min, room_max = -size / 2, size / 2
    materials: list[Material] = []

    def new_material():
        materials.append(random_material(style or pick(styles), g))
        return len(materials) - 1

    room_mats = [new_material() for _ in range(4)]                      # walls, floor, ceiling
    room = [room_mats[0], room_mats[0], room_mats[2], room_mats[3], room_mats[1], room_mats[1]]
    scene = Scene(room_min, room_max, materials, room, style=style or "mixed")
    floor_y = float(room_max[1])
    lo, hi = n_objects
    count = lo + int(torch.randint(hi - lo + 1, (1,), generator=g))
    for _ in range(count):
        kind = pick(("box", "box", "sphere", "panel"))
        xz = (rand(2) - 0.5) * (size[[0, 2]] * 0.6)
        m = new_material()
        if kind == "box":
            half = torch.tensor([0.2, 0.2, 0.2]) + rand(3) * torch.tensor([0.5, 0.6, 0.5])
            center = torch.tensor([xz[0], floor_y - half[1], xz[1]])
            scene.boxes.append(Box(center, half, float(rand(1) * math.pi), m))
        elif kind == "sphere":
            r = float(0.25 + 0.45 * rand(1))
            lift = float(rand(1)) * 0.8
            scene.spheres.append(Sphere(torch.tensor([xz[0], floor_y - r - lift, xz[1]]), r, m))
        else:
            hw, hh = float(0.3 + 0.6 * rand(1)), float(0.3 + 0.5 * rand(1))
            center = torch.tensor([xz[0], floor_y - hh - float(rand(1)) * 0.5, xz[1]])
            scene.panels.append(Panel(center, float(rand(1) * 2 * math.pi), hw, hh, m))
    scene.light = torch.tensor([float(rand(1) - 0.5), -1.0, float(rand(1) - 0.5)])
    return scene


# --- cameras ---------------------------------------------------------------------------
def intrinsics(size: int, fov_deg: float) -> torch.Tensor:
    f = (size / 2) / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[f, 0.0, (size - 1) / 2], [0.0, f, (size - 1) / 2], [0.0, 0.0, 1.0]])


def look_at(eye: torch.Tensor, target: torch.Tensor, up=(0.0, -1.0, 0.0)) -> torch.Tensor:
    """Camera-to-world pose (OpenCV axes) of a camera at `eye` looking at `target`."""
    z = torch.nn.functional.normalize(target - eye, dim=0)
    x = torch.nn.functional.normalize(torch.linalg.cross(-torch.tensor(up), z), dim=0)
    if not torch.isfinite(x).all() or x.norm() < 1e-6:
        x = torch.tensor([1.0, 0.0, 0.0])
    y = torch.linalg.cross(z, x)
    pose = torch.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, eye
    return pose


def camera_path(scene: Scene, n_views: int, overlap: float = 0.7, seed: int = 0,
                max_step_deg: float = 60.0) -> torch.Tensor:
    """Poses (n, 4, 4) on an arc around a point of the room, all looking inward.

    `overlap` in [0, 1] sets the angle between consecutive views:
    (1 - overlap) * max_step_deg, so 1.0 is a static camera and 0.0 a 60° step.
    """
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be in [0, 1], got {overlap}")
    g = torch.Generator().manual_seed(int(seed) + 7919)
    half = (scene.room_max - scene.room_min) / 2
    target = scene.center + (torch.rand(3, generator=g) - 0.5) * half * torch.tensor(
        [0.4, 0.2, 0.4]) + torch.tensor([0.0, 0.3, 0.0])
    radius = float(min(half[0], half[2]) * (0.55 + 0.3 * torch.rand(1, generator=g)))
    step = math.radians((1.0 - overlap) * max_step_deg)
    start = float(torch.rand(1, generator=g)) * 2 * math.pi
    height = float(scene.center[1] - 0.2 - 0.4 * torch.rand(1, generator=g))
    poses = []
    for i in range(n_views):
        a = start + i * step
        jitter = (torch.rand(3, generator=g) - 0.5) * torch.tensor([0.15, 0.15, 0.15])
        eye = torch.tensor([target[0] + radius * math.cos(a), height,
                            target[2] + radius * math.sin(a)]) + jitter
        aim = target + (torch.rand(3, generator=g) - 0.5) * 0.3
        poses.append(look_at(eye, aim))
    return torch.stack(poses)


# --- rendering -------------------------------------------------------------------------
def pixel_rays(K: torch.Tensor, pose: torch.Tensor, size: int):
    v, u = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                          torch.arange(size, dtype=torch.float32), indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1).reshape(-1, 3)
    cam_dirs = pix @ torch.linalg.inv(K).T                  # z = 1
    world_dirs = cam_dirs @ pose[:3, :3].T
    origins = pose[:3, 3].expand_as(world_dirs)
    return origins, world_dirs, cam_dirs


def render(scene: Scene, K: torch.Tensor, pose: torch.Tensor, size: int) -> dict:
    """RGB (H,W,3) in [0,1], depth (H,W), world points (H,W,3), valid (H,W)."""
    origins, dirs, cam_dirs = pixel_rays(K, pose, size)
    unit = torch.nn.functional.normalize(dirs, dim=-1)
    t, points, normals, mats = scene.cast(origins, unit)
    rgb = scene.colors(points, normals, mats, unit)
    depth = t / dirs.norm(dim=-1)                            # z in the camera frame
    valid = t < FAR / 2
    return {"rgb": rgb.reshape(size, size, 3), "depth": depth.reshape(size, size),
            "pts3d": points.reshape(size, size, 3), "valid": valid.reshape(size, size)}


# --- degradations ----------------------------------------------------------------------
def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur an (H,W,3) image with a separable Gaussian (reflect padding)."""
    if sigma <= 0:
        return img
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    t = img.permute(2, 0, 1)[None]
    t = torch.nn.functional.pad(t, (radius, radius, radius, radius), mode="reflect")
    t = torch.nn.functional.conv2d(t, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    t = torch.nn.functional.conv2d(t, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return t[0].permute(1, 2, 0)


def degrade(img: torch.Tensor, kind: str, g: torch.Generator, strength: float = 1.0):
    """'low_light' (dimmed, gamma, Poisson-Gaussian noise), 'blur', 'none'."""
    if kind == "none":
        return img
    if kind == "low_light":
        gain = 0.35 / max(strength, 1e-3)
        dim = img.clamp(0, 1) ** 1.3 * gain
        photons = 60.0 / strength
        shot = torch.poisson(dim * photons, generator=g) / photons
        read = torch.randn(img.shape, generator=g) * 0.02 * strength
        return (shot + read).clamp(0, 1)
    if kind == "blur":
        return gaussian_blur(img, 1.2 * strength)
    raise ValueError(f"unknown degradation {kind!r}; known: none, low_light, blur")


DEGRADATIONS = ("none", "low_light", "blur")


# --- views of one scene ------------------------------------------------------------------
@dataclass
class SceneViews:
    """What a target scene gives: images and the ground truth to score against."""
    images: torch.Tensor     # (n, H, W, 3) in [0, 1], degraded if asked
    clean: torch.Tensor      # (n, H, W, 3) before degradation
    depth: torch.Tensor      # (n, H, W)
    pts3d: torch.Tensor      # (n, H, W, 3) world
    valid: torch.Tensor      # (n, H, W)
    K: torch.Tensor          # (n, 3, 3)
    poses: torch.Tensor      # (n, 4, 4) camera-to-world
    meta: dict


def render_views(scene: Scene, poses: torch.Tensor, size: int = 64, fov_deg: float = 60.0,
                 degradation: str | tuple[str, ...] = "none", seed: int = 0,
                 strength: float = 1.0) -> SceneViews:
    g = torch.Generator().manual_seed(int(seed) + 104729)
    K = intrinsics(size, fov_deg)
    outs = [render(scene, K, p, size) for p in poses]
    clean = torch.stack([o["rgb"] for o in outs])
    kinds = (degradation,) if isinstance(degradation, str) else tuple(degradation)
    images = []
    for img in clean:
        for kind in kinds:
            img = degrade(img, kind, g, strength)
        images.append(img)
    return SceneViews(torch.stack(images), clean, torch.stack([o["depth"] for o in outs]),
                      torch.stack([o["pts3d"] for o in outs]),
                      torch.stack([o["valid"] for o in outs]),
                      K.expand(len(poses), 3, 3).clone(), poses.clone(),
                      {"style": scene.style, "degradation": list(kinds), "fov_deg": fov_deg,
                       "size": size})


def make_target_scene(seed: int, n_views: int = 6, size: int = 64, overlap: float = 0.75,
                      style: str | None = None, degradation=("low_light", "blur"),
                      fov_deg: float = 60.0, strength: float = 0.5) -> SceneViews:
    """A held-out calibration scene: a new room, degraded images (see the module docstring).

    `style` None mixes the pretraining styles; 'cells' gives the unseen style.
    """
    if seed >= HELD_OUT_SEEDS:
        raise ValueError(f"target-scene seed {seed} is in the pretraining range (>= "
                         f"{HELD_OUT_SEEDS}); held-out scenes use seeds below it")
    scene = make_scene(seed, style=style)
    poses = camera_path(scene, n_views, overlap=overlap, seed=seed)
    return render_views(scene, poses, size, fov_deg, degradation, seed, strength)


def random_pair(seed: int, size: int = 64, styles=PRETRAIN_STYLES) -> SceneViews:
    """Two views of a random generic scene, for pretraining (random overlap and fov)."""
    g = torch.Generator().manual_seed(int(seed) + 31)
    scene = make_scene(seed, styles=styles)
    overlap = float(0.45 + 0.5 * torch.rand(1, generator=g))
    fov = float(50 + 25 * torch.rand(1, generator=g))
    poses = camera_path(scene, 2, overlap=overlap, seed=seed)
    if torch.rand(1, generator=g) < 0.5:
        poses = poses.flip(0)
    return render_views(scene, poses, size, fov, "none", seed)


# --- pretraining scenes: several views, matching required ------------------------------
def make_float_scene(seed: int, styles: tuple[str, ...] = PRETRAIN_STYLES) -> Scene:
    """Primitives floating at random positions and orientations inside a far, textured box,
    at a random overall scale: no floor, no walls nearby, no up direction, so a single view
    tells little about depth and the geometry is only recoverable by matching views."""
    g = torch.Generator().manual_seed(int(seed) + 17)

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    def pick(seq):
        return seq[int(torch.randint(len(seq), (1,), generator=g))]

    scale = math.exp(math.log(0.3) + rand(1).item() * math.log(10.0))     # 0.3 .. 3
    half = scale * (6.0 + 6.0 * rand(3))
    materials: list[Material] = []

    def new_material():
        materials.append(random_material(pick(styles), g))
        return len(materials) - 1

    walls = [new_material() for _ in range(3)]
    scene = Scene(-half, half, materials, [walls[0], walls[0], walls[1], walls[1], walls[2],
                                           walls[2]], style="float")
    for _ in range(5 + int(torch.randint(6, (1,), generator=g))):
        center = (rand(3) - 0.5) * 3.0 * scale
        m = new_material()
        kind = pick(("box", "box", "sphere", "panel"))
        if kind == "box":
            size = scale * (0.15 + 0.45 * rand(3))
            scene.boxes.append(Box(center, size, 0.0, m, rot=random_rotation(g)))
        elif kind == "sphere":
            scene.spheres.append(Sphere(center, scale * float(0.15 + 0.4 * rand(1)), m))
        else:
            scene.panels.append(Panel(center, 0.0, scale * float(0.3 + 0.5 * rand(1)),
                                      scale * float(0.3 + 0.5 * rand(1)), m,
                                      rot=random_rotation(g)))
    scene.light = torch.randn(3, generator=g)
    return scene


def axis_rotation(axis: int, angle: float) -> torch.Tensor:
    """The 3x3 rotation by `angle` (radians) about coordinate axis 0, 1 or 2."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    r = torch.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def roll_pose(pose: torch.Tensor, roll_deg: float) -> torch.Tensor:
    """The same camera turned by `roll_deg` about its optical axis."""
    out = pose.clone()
    out[:3, :3] = pose[:3, :3] @ axis_rotation(2, math.radians(roll_deg))
    return out


def orbit_path(center: torch.Tensor, radius: float, n_views: int, step_deg: float,
               g: torch.Generator, max_roll_deg: float = 35.0) -> torch.Tensor:
    """Poses (n, 4, 4) on a tilted circle around `center`, all aimed at it, with a random
    common roll and a few degrees of roll jitter per view."""
    axis_tilt = random_rotation(g)
    start = float(torch.rand(1, generator=g)) * 2 * math.pi
    roll = (float(torch.rand(1, generator=g)) * 2 - 1) * max_roll_deg
    poses = []
    for i in range(n_views):
        a = start + math.radians(step_deg) * i
        offset = axis_tilt @ torch.tensor([math.cos(a), 0.0, math.sin(a)]) * radius
        aim = center + (torch.rand(3, generator=g) - 0.5) * 0.2 * radius
        pose = look_at(center + offset, aim)
        jitter = (float(torch.rand(1, generator=g)) - 0.5) * 6.0
        poses.append(roll_pose(pose, roll + jitter))
    return torch.stack(poses)


def view_angle_deg(pose_a: torch.Tensor, pose_b: torch.Tensor) -> float:
    """Angle between two cameras' optical axes."""
    cos = float((pose_a[:3, 2] * pose_b[:3, 2]).sum().clamp(-1, 1))
    return math.degrees(math.acos(cos))


def random_scene_views(seed: int, size: int = 64, n_views: tuple[int, int] = (4, 8),
                       float_fraction: float = 0.5, styles=PRETRAIN_STYLES) -> SceneViews:
    """4-8 views of one random pretraining scene (a room, or floating primitives with
    `float_fraction`): consecutive views 3-18 degrees apart, so the pairs of a scene span
    the baselines of a 6-view calibration graph; field of view 50-75 degrees."""
    g = torch.Generator().manual_seed(int(seed) + 53)
    n = n_views[0] + int(torch.randint(n_views[1] - n_views[0] + 1, (1,), generator=g))
    step = 3.0 + 15.0 * float(torch.rand(1, generator=g))
    fov = float(50 + 25 * torch.rand(1, generator=g))
    if float(torch.rand(1, generator=g)) < float_fraction:
        scene = make_float_scene(seed, styles=styles)
        extent = float((scene.room_max - scene.room_min).min()) / 12.0      # ~ object spread
        radius = extent * (2.5 + 2.0 * float(torch.rand(1, generator=g)))
        poses = orbit_path(torch.zeros(3), radius, n, step, g)
    else:
        scene = make_scene(seed, styles=styles)
        poses = camera_path(scene, n, overlap=1.0 - step / 60.0, seed=seed)
        if float(torch.rand(1, generator=g)) < 0.5:
            roll = (float(torch.rand(1, generator=g)) * 2 - 1) * 15.0
            poses = torch.stack([roll_pose(p, roll) for p in poses])
    views = render_views(scene, poses, size, fov, "none", seed)
    views.meta.update({"step_deg": step, "kind": scene.style})
    return views
