"""Target shifts: each changes only what it says, and the ground truth stays true."""
import math

import pytest
import torch

from lorakit.domains.geometry import scenes, shifts

SIZE = 24


@pytest.fixture(scope="module")
def clean():
    return shifts.target_scene("clean", 4000, n_views=6, size=SIZE)


def test_seed_sets_are_disjoint_and_held_out_from_pretraining():
    sets = [shifts.VALIDATION_SEEDS, shifts.TEST_SEEDS, shifts.GATE_SEEDS, shifts.UNRELATED_SEEDS]
    flat = [s for group in sets for s in group]
    assert len(flat) == len(set(flat))
    assert max(flat) < scenes.HELD_OUT_SEEDS and min(flat) >= 0
    with pytest.raises(ValueError, match="not held out"):
        shifts.target_scene("clean", scenes.HELD_OUT_SEEDS)


def test_frame_corruption_changes_only_the_chosen_frames_and_no_ground_truth(clean):
    v = shifts.target_scene("frame_corruption", 4000, n_views=6, size=SIZE)
    corrupted = v.meta["corrupted"]
    assert len(corrupted) == 2 and set(corrupted.values()) <= set(shifts.CORRUPTIONS)
    for k in range(6):
        same = torch.equal(v.images[k], clean.images[k])
        assert same == (k not in corrupted), k
    for field in ("clean", "depth", "pts3d", "valid", "K", "poses"):
        assert torch.equal(getattr(v, field), getattr(clean, field)), field


@pytest.mark.parametrize("kind", shifts.CORRUPTIONS)
def test_every_corruption_changes_a_frame_visibly_and_stays_in_range(clean, kind):
    g = torch.Generator().manual_seed(0)
    img = clean.images[0]
    out = shifts.CORRUPT[kind](img, g)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    assert (out - img).abs().mean() > 0.01


def test_mild_global_degrades_every_frame_at_most_at_strength_a_quarter(clean):
    v = shifts.target_scene("mild_global", 4000, n_views=6, size=SIZE)
    assert all(not torch.equal(v.images[k], clean.images[k]) for k in range(6))
    assert torch.equal(v.depth, clean.depth) and torch.equal(v.poses, clean.poses)
    assert v.meta["strength"] <= shifts.MAX_GLOBAL_STRENGTH
    with pytest.raises(ValueError, match="strength"):
        shifts.mild_global(clean, 0, strength=0.5)


def test_geometry_shift_rolls_pitches_and_refocuses_with_consistent_ground_truth(clean):
    v = shifts.target_scene("geometry", 4000, n_views=6, size=SIZE)
    # same camera centres, rotated cameras, a focal outside pretraining's 50-75°
    assert torch.allclose(v.poses[:, :3, 3], clean.poses[:, :3, 3])
    fov = math.degrees(2 * math.atan((SIZE / 2) / float(v.K[0, 0, 0])))
    assert 35 <= fov <= 45 or 85 <= fov <= 95
    for k in range(6):
        rel = clean.poses[k, :3, :3].T @ v.poses[k, :3, :3]
        # about the optical axis by roll, then the x axis by pitch
        angle = math.degrees(math.acos(max(-1.0, min(1.0, (float(rel.trace()) - 1) / 2))))
        assert 15 <= angle <= 40
        roll_axis = rel[:, 2]
        assert float(roll_axis[2]) > math.cos(math.radians(16))   # pitch < 15° tilts z only
    # reproject: each pixel's world point lands back on that pixel, at its depth
    v_, u_ = torch.meshgrid(torch.arange(SIZE * 1.0), torch.arange(SIZE * 1.0), indexing="ij")
    for k in range(6):
        cam = (v.pts3d[k] - v.poses[k][:3, 3]) @ v.poses[k][:3, :3]
        assert torch.allclose(cam[..., 2], v.depth[k], rtol=1e-4, atol=1e-4)
        proj = cam @ v.K[k].T
        uv = proj[..., :2] / proj[..., 2:]
        assert torch.allclose(uv, torch.stack([u_, v_], -1), atol=1e-3)
    # and a point seen by view 0 projects into view 1 where view 1 sees the same point
    p = v.pts3d[0].reshape(-1, 3)
    cam1 = (p - v.poses[1][:3, 3]) @ v.poses[1][:3, :3]
    proj = cam1 @ v.K[1].T
    uv = (proj[:, :2] / proj[:, 2:]).round().long()
    inside = (proj[:, 2] > 0) & (uv >= 0).all(-1) & (uv < SIZE).all(-1)
    seen = v.pts3d[1][uv[inside, 1], uv[inside, 0]]
    close = (seen - p[inside]).norm(dim=-1) < 0.05 * cam1[inside, 2]
    assert inside.sum() > 20 and close.float().mean() > 0.5


def test_geometry_shift_tilts_every_view_the_same_way_so_neighbours_stay_matchable():
    for seed in shifts.VALIDATION_SEEDS[:6]:
        p = shifts.geometry_shift_params(seed, 6)
        for key, (lo, hi) in (("roll_deg", (15, 35)), ("pitch_deg", (5, 15))):
            values = p[key]
            assert all(lo <= abs(a) <= hi for a in values)
            assert len({a > 0 for a in values}) == 1      # one sign per scene
        assert 35 <= p["fov_deg"] <= 45 or 85 <= p["fov_deg"] <= 95


def test_tilt_poses_is_a_rotation_about_the_camera_axes():
    pose = scenes.look_at(torch.tensor([1.0, -1.0, 0.5]), torch.tensor([0.0, 0.0, 3.0]))
    rolled = shifts.tilt_poses(pose[None], 90.0, 0.0)[0]
    # a 90° roll keeps the optical axis and turns x into y
    assert torch.allclose(rolled[:3, 2], pose[:3, 2], atol=1e-6)
    assert torch.allclose(rolled[:3, 0], pose[:3, 1], atol=1e-6)
    pitched = shifts.tilt_poses(pose[None], 0.0, 30.0)[0]
    assert torch.allclose(pitched[:3, 0], pose[:3, 0], atol=1e-6)
    cos = float(pitched[:3, 2] @ pose[:3, 2])
    assert cos == pytest.approx(math.cos(math.radians(30)), abs=1e-5)


def test_unknown_shift_is_a_clear_error():
    with pytest.raises(ValueError, match="known"):
        shifts.target_scene("fog", 4000)
