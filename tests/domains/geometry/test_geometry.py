"""The geometry domain: procedural scenes, image folders, metrics, transforms."""
import math

import pytest
import torch

from lorakit.domains.geometry import images as gimages
from lorakit.domains.geometry import metrics, scenes, transforms
from lorakit.errors import LoraKitError


@pytest.fixture(scope="module")
def views():
    scene = scenes.make_scene(3)
    poses = scenes.camera_path(scene, 3, overlap=0.8, seed=3)
    return scenes.render_views(scene, poses, size=24)


def test_depth_points_and_cameras_agree(views):
    for k in range(3):
        cam = (views.pts3d[k] - views.poses[k][:3, 3]) @ views.poses[k][:3, :3]
        assert torch.allclose(cam[..., 2], views.depth[k], rtol=1e-4, atol=1e-4)
        proj = cam @ views.K[k].T
        uv = proj[..., :2] / proj[..., 2:]
        v, u = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
        assert torch.allclose(uv, torch.stack([u, v], -1), atol=1e-3)
    assert views.valid.all()
    assert views.images.min() >= 0 and views.images.max() <= 1


def test_rendering_is_deterministic_and_scenes_differ():
    a = scenes.random_pair(5, size=16)
    b = scenes.random_pair(5, size=16)
    c = scenes.random_pair(6, size=16)
    assert torch.equal(a.images, b.images) and torch.equal(a.depth, b.depth)
    assert not torch.equal(a.images, c.images)


def test_overlap_controls_the_angle_between_views():
    scene = scenes.make_scene(1)

    def step(overlap):
        p = scenes.camera_path(scene, 2, overlap=overlap, seed=1)
        r = p[0, :3, :3].T @ p[1, :3, :3]
        return float(metrics.rotation_angle_deg(r))
    assert step(0.9) < step(0.5) < step(0.1)
    with pytest.raises(ValueError):
        scenes.camera_path(scene, 2, overlap=1.5)


def test_degradations_and_unseen_style(views):
    g = torch.Generator().manual_seed(0)
    img = views.clean[0]
    dark = scenes.degrade(img, "low_light", g)
    assert dark.mean() < 0.6 * img.mean()
    blur = scenes.degrade(img, "blur", g)
    hf = lambda x: (x[1:] - x[:-1]).abs().mean()   # noqa: E731
    assert hf(blur) < hf(img)
    target = scenes.make_target_scene(3, n_views=2, size=16)
    assert target.meta["style"] == "mixed" and target.meta["degradation"] == ["low_light", "blur"]
    assert not torch.allclose(target.images, target.clean)
    cells = scenes.make_target_scene(3, n_views=2, size=16, style="cells")
    assert cells.meta["style"] == "cells"
    with pytest.raises(ValueError, match="pretraining range"):
        scenes.make_target_scene(scenes.HELD_OUT_SEEDS, n_views=2, size=16)
    with pytest.raises(ValueError):
        scenes.degrade(img, "fog", g)
    assert set(scenes.PRETRAIN_STYLES).isdisjoint(scenes.UNSEEN_STYLES)


def test_metrics_are_zero_for_exact_answers_up_to_scale(views):
    assert metrics.depth_absrel(views.depth * 3.0, views.depth) < 1e-6
    r = scenes.look_at(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.0, 0.0]))
    moved = 2.5 * views.pts3d @ r[:3, :3].T + r[:3, 3]
    assert metrics.pointmap_error(moved, views.pts3d, mode="sim3") < 1e-5
    assert metrics.pointmap_error(views.pts3d * 0.3, views.pts3d, mode="scale") < 1e-6
    assert metrics.pointmap_error(views.pts3d + 0.5, views.pts3d, mode="scale") > 0.05
    sim = r.clone()
    poses = torch.stack([sim @ p for p in views.poses])
    errs = metrics.relative_pose_errors(poses, views.poses)
    assert errs["rot_err_deg"] < 0.1 and errs["trans_dir_err_deg"] < 0.1
    noisy = views.poses.clone()
    noisy[1, :3, :3] = noisy[1, :3, :3] @ scenes._yaw_matrix(math.radians(10))
    assert metrics.relative_pose_errors(noisy, views.poses)["rot_err_deg"] > 3


def test_image_folder_reader(tmp_path, views):
    gimages.write_folder(views.images, tmp_path / "ok")
    imgs, names = gimages.read_folder(tmp_path / "ok", size=16)
    assert imgs.shape == (3, 16, 16, 3) and names[0] == "view_000.png"


def test_image_folder_errors(tmp_path, views):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoraKitError, match="empty"):
        gimages.read_folder(tmp_path / "empty")
    with pytest.raises(LoraKitError, match="does not exist"):
        gimages.read_folder(tmp_path / "nope")
    one = tmp_path / "one"
    gimages.write_folder(views.images[:1], one)
    with pytest.raises(LoraKitError, match="at least two"):
        gimages.read_folder(one)
    bad = tmp_path / "bad"
    gimages.write_folder(views.images[:2], bad)
    (bad / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(LoraKitError, match="cannot read image"):
        gimages.read_folder(bad)
    mixed = tmp_path / "mixed"
    gimages.write_folder(views.images[:2], mixed)
    from PIL import Image
    Image.new("RGB", (40, 30)).save(mixed / "z_other.png")
    with pytest.raises(LoraKitError, match="mixed sizes"):
        gimages.read_folder(mixed)
    assert gimages.read_folder(mixed, size=16, allow_mixed_sizes=True)[0].shape[0] == 3


def test_similarity_recovers_a_transform_and_ignores_zero_weight_outliers():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(60, 3, generator=g)
    pose = scenes.look_at(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.0, 0.0]))
    dst = 2.5 * src @ pose[:3, :3].T + pose[:3, 3]
    dst[:10] += 5 * torch.randn(10, 3, generator=g)          # outliers
    w = torch.ones(60)
    w[:10] = 0
    s, r, t = transforms.similarity(src, dst, w)
    assert abs(float(s) - 2.5) < 1e-4
    assert torch.allclose(r, pose[:3, :3], atol=1e-4) and torch.allclose(t, pose[:3, 3], atol=1e-4)
    s, r, t = transforms.similarity(src[10:], dst[10:], scale=False)
    assert float(s) == 1.0 and torch.allclose(r @ r.T, torch.eye(3), atol=1e-5)
    s, r, t = transforms.similarity(src, 3 * src + 1, rotation=False)
    assert abs(float(s) - 3) < 1e-5 and torch.equal(r, torch.eye(3))
    assert torch.allclose(t, torch.ones(3), atol=1e-5)


def test_quaternions_round_trip_and_to_frame_inverts_the_pose(views):
    r = views.poses[:, :3, :3]
    assert torch.allclose(transforms.quat_to_rotmat(transforms.rotmat_to_quat(r)), r, atol=1e-5)
    cam = transforms.to_frame(views.poses[0], views.pts3d[0])
    assert torch.allclose(transforms.apply(views.poses[0], cam), views.pts3d[0], atol=1e-4)
    assert torch.allclose(cam[..., 2], views.depth[0], atol=1e-4)
    f = transforms.estimate_focal(cam, torch.ones(24, 24))
    assert abs(float(f) - float(views.K[0, 0, 0])) < 1e-2


def test_camera_from_world_points_is_the_rendering_camera(views):
    for k in range(3):
        pose, K = transforms.camera_from_pointmap(views.pts3d[k], views.valid[k])
        assert torch.allclose(pose, views.poses[k], atol=1e-3)
        assert torch.allclose(K, views.K[k], atol=1e-2)
    wall = views.pts3d[0].clone()
    wall[..., 2] = 1.0                                      # every point on one plane
    with pytest.raises(LoraKitError, match="one plane"):
        transforms.camera_from_pointmap(wall)
