"""The pretraining recipe of the embedded DUSt3R: multi-view scenes, correspondences, the
cross-attention probe, one step of both losses."""
import random

import pytest
import torch

from lorakit.domains.geometry import scenes

from .helpers import MICRO

pytest.importorskip("mini_dust3r.model", reason="lora3d extra not installed")


def test_patch_correspondences_are_the_identity_for_the_same_camera_and_none_when_hidden():
    from lorakit.plugins.lora3d.loss import patch_correspondences
    v = scenes.random_scene_views(1_000_003, size=32, n_views=(2, 2))
    same = patch_correspondences(v.pts3d[0], v.valid[0], v.K[0], v.poses[0], v.depth[0], 8)
    assert same.tolist() == list(range(16))
    # a camera turned round (180 degrees about its y axis) sees none of those points
    back = v.poses[0].clone()
    back[:3, 0], back[:3, 2] = -back[:3, 0], -back[:3, 2]
    hidden = patch_correspondences(v.pts3d[0], v.valid[0], v.K[0], back, v.depth[0], 8)
    assert (hidden == -1).all()


def test_correspondences_between_two_views_reproject_to_the_same_point():
    from lorakit.plugins.lora3d.loss import patch_correspondences
    v = scenes.random_scene_views(1_000_011, size=64, n_views=(3, 3))
    match = patch_correspondences(v.pts3d[0], v.valid[0], v.K[1], v.poses[1], v.depth[1], 8)
    found = match[match >= 0]
    assert len(found) >= 8
    centres = v.pts3d[0][4::8, 4::8].reshape(-1, 3)[match >= 0]
    other = v.pts3d[1][4::8, 4::8].reshape(-1, 3)[found]
    # the matched patch of the other view holds the point within about a patch's width
    extent = (v.pts3d[1][v.valid[1]].amax(0) - v.pts3d[1][v.valid[1]].amin(0)).norm()
    assert float((centres - other).norm(dim=-1).median()) < 0.25 * float(extent)


def test_scene_views_are_deterministic_with_several_views_and_pairs_within_the_angle():
    from lorakit.plugins.lora3d.pretrain import scene_pairs
    a = scenes.random_scene_views(1_000_005, size=16)
    b = scenes.random_scene_views(1_000_005, size=16)
    assert torch.equal(a.images, b.images) and 4 <= a.images.shape[0] <= 8
    pairs = scene_pairs(a, 30.0)
    assert pairs and all(scenes.view_angle_deg(a.poses[i], a.poses[j]) <= 30.0
                         for i, j in pairs)
    kinds = {scenes.random_scene_views(s, size=8, float_fraction=0.5).meta["kind"]
             for s in range(1_000_000, 1_000_012)}
    assert kinds == {"float", "mixed"}


def test_float_scenes_have_tilted_boxes_and_no_floor_near_the_objects():
    scene = scenes.make_float_scene(1_000_002)
    assert scene.boxes or scene.panels
    rots = [b.rotation() for b in scene.boxes] + [p.rotation() for p in scene.panels]
    for r in rots:
        assert torch.allclose(r @ r.T, torch.eye(3), atol=1e-5)
    spread = max(float(b.center.abs().max()) for b in scene.boxes + scene.spheres
                 + scene.panels)
    assert float(scene.room_max.min()) > 2 * spread      # the box around them is far away


def test_aperiodic_textures_do_not_repeat_along_a_line():
    g = torch.Generator().manual_seed(0)
    for style in ("noise", "marble"):
        m = scenes.random_material(style, g)
        x = torch.linspace(0, 8, 400)
        p = torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], -1)
        c = m.shade(p)[:, 0]
        assert float(c.std()) > 0.03
        # no shift between 0.2 and 4 m makes the colour profile repeat
        for shift in range(10, 200, 5):
            assert float((c[shift:] - c[:-shift]).abs().mean()) > 0.01


def test_probe_records_one_head_per_cross_attention_and_the_step_has_both_losses():
    from lorakit.domains.geometry.dust3r import build_model
    from lorakit.plugins.lora3d.loss import CrossAttentionProbe
    from lorakit.plugins.lora3d.pretrain import SceneStream, make_batch, train_step
    torch.manual_seed(0)
    model = build_model(dict(MICRO, img_size=(32, 32)))
    stream = iter(SceneStream(1_000_020, size=32, float_fraction=0.5, max_angle=80.0,
                              patch=8))
    pool = [next(stream), next(stream)]
    assert pool[1]["seed"] == pool[0]["seed"] + 1
    assert pool[0]["match"].shape == (len(pool[0]["pairs"]), 2, 16)
    batch = make_batch(pool, 2, random.Random(0))
    assert batch["match12"].shape == (2, 16)
    loss, parts = train_step(model, batch, match=0.1)
    assert torch.isfinite(loss) and {"regr", "conf", "match"} <= set(parts)
    loss.backward()
    probe = CrossAttentionProbe(model)
    with probe:
        train_step(model, batch, match=0.0)
    assert [w for w, _ in probe.logits] == [0, 1] and probe.logits[0][1].shape == (2, 16, 16)
    n = len(probe.logits)
    train_step(model, batch, match=0.0)      # the hooks are gone after the block
    assert len(probe.logits) == n
