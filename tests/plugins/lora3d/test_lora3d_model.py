"""lora3d with a micro DUSt3R: checkpoints, merge, Lightning, errors."""
import argparse
from dataclasses import replace

import pytest
import torch

from lorakit.domains.geometry import scenes
from lorakit.errors import LoraKitError

from .helpers import INF, MICRO

mini = pytest.importorskip("mini_dust3r.model", reason="lora3d extra not installed")


def micro_model(seed=0):
    from lorakit.domains.geometry.dust3r import build_model
    torch.manual_seed(seed)
    return build_model(MICRO).eval()


def test_tiny_model_has_the_80_lora_targets_and_about_three_million_parameters():
    import lorakit
    from lorakit.domains.geometry.dust3r import TINY_ARGS, build_model
    from lorakit.plugins.lora3d.module import LORA_TARGETS
    model = build_model(TINY_ARGS)
    n = sum(p.numel() for p in model.parameters())
    assert 2.5e6 < n < 5e6          # the bound: <= 5 M parameters, <= 20 MB
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=4, targets=LORA_TARGETS))
    assert len(adapters.layers) == 80


def test_checkpoint_round_trip_in_the_upstream_format(tmp_path):
    from lorakit.domains.geometry.dust3r import load_checkpoint, save_checkpoint
    model = micro_model()
    save_checkpoint(model, MICRO, tmp_path / "m.pth")
    raw = torch.load(tmp_path / "m.pth", weights_only=False)
    assert set(raw) >= {"args", "model"} and isinstance(raw["args"], argparse.Namespace)
    assert raw["args"].model.startswith("AsymmetricCroCo3DStereo(")
    loaded, args = load_checkpoint(tmp_path / "m.pth")
    assert args["img_size"] == (16, 16) and args["depth_mode"] == ("exp", -INF, INF)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_a_checkpoint_that_is_not_dust3r_is_refused(tmp_path):
    from lorakit.domains.geometry.dust3r import load_checkpoint
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(LoraKitError, match="not a DUSt3R checkpoint"):
        load_checkpoint(tmp_path / "text.pth")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(LoraKitError, match="expected keys 'args' and 'model'"):
        load_checkpoint(tmp_path / "other.pth")
    torch.save({"args": argparse.Namespace(model="__import__('os').system('true')"),
                "model": {}}, tmp_path / "evil.pth")
    with pytest.raises(LoraKitError, match="AsymmetricCroCo3DStereo"):
        load_checkpoint(tmp_path / "evil.pth")
    torch.save({"args": argparse.Namespace(model="AsymmetricCroCo3DStereo(enc_depth=1)"),
                "model": {"nope": torch.zeros(1)}}, tmp_path / "wrong.pth")
    with pytest.raises(LoraKitError):
        load_checkpoint(tmp_path / "wrong.pth")
    with pytest.raises(LoraKitError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")


def test_merged_adapter_gives_the_unmerged_prediction():
    import lorakit
    from lorakit.plugins.lora3d.inference import pairwise_inference
    from lorakit.plugins.lora3d.module import LORA_TARGETS
    model = micro_model()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=4, targets=LORA_TARGETS))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _name, p in adapters.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    imgs = torch.rand(3, 16, 16, 3, generator=g)
    edges = [(0, 1), (1, 2), (2, 0)]
    unmerged = pairwise_inference(model, imgs, edges)
    with adapters.disabled():
        base = pairwise_inference(model, imgs, edges)
    assert not torch.allclose(base.pts_i, unmerged.pts_i, atol=1e-4)
    adapters.merge()
    merged = pairwise_inference(model, imgs, edges)
    assert torch.allclose(merged.pts_i, unmerged.pts_i, atol=1e-4, rtol=1e-4)
    assert torch.allclose(merged.conf_j, unmerged.conf_j, atol=1e-4, rtol=1e-4)


def test_pair_graphs():
    from lorakit.plugins.lora3d.inference import make_pairs
    assert len(make_pairs(4)) == 12
    swin = make_pairs(5, "swin", 1)
    assert (0, 1) in swin and (1, 0) in swin and (0, 2) not in swin and len(swin) == 8
    with pytest.raises(LoraKitError):
        make_pairs(1)
    with pytest.raises(LoraKitError):
        make_pairs(3, "star")


# --- the Lightning module, end to end at micro size ---------------------------------------
def test_fit_saves_an_adapter_and_predict_writes_ply_poses_and_preview(tmp_path):
    import json

    import lightning.pytorch as pl

    from lorakit.domains.geometry.dust3r import save_checkpoint
    from lorakit.domains.geometry.images import write_folder
    from lorakit.io.adapter_file import read_adapter
    from lorakit.plugins.lora3d.data import SceneDataModule
    from lorakit.plugins.lora3d.module import ADAPTER, SelfCalibrationModule
    from lorakit.plugins.lora3d.outputs import read_ply

    save_checkpoint(micro_model(), MICRO, tmp_path / "micro.pth")
    views = scenes.make_target_scene(4, n_views=3, size=16)
    write_folder(views.images, tmp_path / "photos")
    kw = dict(checkpoint=str(tmp_path / "micro.pth"), adapter=replace(ADAPTER, rank=2),
              align_iters=10, round_iters=5, reweight_rounds=1, backend="native", output_dir=str(tmp_path / "out"))
    module = SelfCalibrationModule(**kw)
    data = SceneDataModule(images=str(tmp_path / "photos"), size=16, batch_pairs=2)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(module, data)
    header, tensors = read_adapter(tmp_path / "out" / "adapter.safetensors")
    assert header["extra"]["plugin"] == "lora3d" and header["extra"]["steps"] == 2
    assert len(tensors) == 2 * len(module.adapters.layers) == 2 * 20   # micro: 4 + 16 Linear
    assert 0 < module.stats["pseudo_label_fraction"] <= 1

    predictor = SelfCalibrationModule(adapter_file=str(tmp_path / "out" / "adapter.safetensors"),
                                      **kw)
    out = trainer.predict(predictor, SceneDataModule(images=str(tmp_path / "photos"), size=16))
    assert out[0]["ply"].endswith("cloud.ply")
    pts, cols = read_ply(tmp_path / "out" / "cloud.ply")
    assert pts.shape == (3 * 16 * 16, 3) and cols.shape == pts.shape
    cams = json.loads((tmp_path / "out" / "poses.json").read_text())["cameras"]
    assert [c["image"] for c in cams] == ["view_000.png", "view_001.png", "view_002.png"]
    assert (tmp_path / "out" / "preview.png").stat().st_size > 1000


def test_data_module_errors(tmp_path):
    from lorakit.plugins.lora3d.data import SceneDataModule
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoraKitError, match="empty"):
        SceneDataModule(images=str(tmp_path / "empty")).setup("fit")
    with pytest.raises(LoraKitError):
        SceneDataModule(batch_pairs=0)


def test_images_of_the_wrong_size_for_the_checkpoint_are_refused(tmp_path):
    import lightning.pytorch as pl

    from lorakit.domains.geometry.dust3r import save_checkpoint
    from lorakit.plugins.lora3d.data import SceneDataModule
    from lorakit.plugins.lora3d.module import SelfCalibrationModule

    save_checkpoint(micro_model(), MICRO, tmp_path / "micro.pth")
    module = SelfCalibrationModule(checkpoint=str(tmp_path / "micro.pth"), backend="native")
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         default_root_dir=tmp_path)
    with pytest.raises(LoraKitError, match="--data.size 16"):
        trainer.fit(module, SceneDataModule(size=24, n_views=2))
