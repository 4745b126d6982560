"""lora3d's one training loop: fit_scene (the module through pl.Trainer) and its ablations."""
import dataclasses

import pytest
import torch

from lorakit.domains.geometry import scenes
from lorakit.errors import LoraKitError
from lorakit.plugins.lora3d.module import ADAPTER

from .helpers import MICRO

pytest.importorskip("mini_dust3r.model", reason="lora3d extra not installed")

FAST = dict(adapter=dataclasses.replace(ADAPTER, rank=2), align_iters=10, round_iters=5,
            reweight_rounds=1, backend="native")


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """A random micro DUSt3R checkpoint and a 3-view target scene of its size."""
    from lorakit.domains.geometry.dust3r import build_model, save_checkpoint
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("micro") / "micro.pth"
    save_checkpoint(build_model(MICRO), MICRO, path)
    views = scenes.make_target_scene(4, n_views=3, size=MICRO["img_size"][0])
    return path, views          # a Path: fit_scene takes str or Path


def fit(micro, out, **kw):
    from lorakit.plugins.lora3d.fit import fit_scene
    checkpoint, views = micro
    return fit_scene(views.images, out_dir=out, checkpoint=checkpoint, max_steps=2,
                     **{**FAST, **kw})


def adapter_tensors(module) -> dict:
    return {n: p.detach().clone() for n, p in module.adapters.named_parameters()}


@pytest.fixture(scope="module")
def full(micro, tmp_path_factory):
    return fit(micro, tmp_path_factory.mktemp("full"))


def test_fit_scene_trains_the_adapters_with_the_default_yaml_trainer(micro, full):
    from lorakit.domains.geometry.dust3r import load_checkpoint
    from lorakit.io.adapter_file import read_adapter
    from lorakit.plugins.lora3d.fit import default_config
    from lorakit.plugins.lora3d.inference import pairwise_inference
    from lorakit.plugins.lora3d.pairs import PairPredictions

    out = full.output_folder()
    header, tensors = read_adapter(out / "adapter.safetensors")
    assert header["extra"]["steps"] == 2 and header["extra"]["calibration"]["labels"] == "pseudo"
    assert len(tensors) == 2 * len(full.adapters.layers)
    assert any(p.abs().sum() > 0 for n, p in full.adapters.named_parameters() if "lora_B" in n)
    base, _ = load_checkpoint(micro[0])      # with the adapters off: the frozen base
    images, edges = micro[1].images, full.before.edges
    with full.adapters.disabled():
        off = pairwise_inference(full.model, images, edges)
    assert torch.allclose(off.pts_i, pairwise_inference(base, images, edges).pts_i)
    assert torch.equal(off.pts_j, full.before.pts_j)
    trainer = full.trainer
    assert trainer.gradient_clip_val == default_config()["trainer"]["gradient_clip_val"]
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine
    assert set(full.stats) >= {"inference_s", "alignment_s", "training_s"}
    assert full.stats["backend"] == full.calibration.alignment.backend == "native"
    assert isinstance(full.before, PairPredictions) and len(full.before.edges) == 6
    assert full.labels.source == "pseudo" and 0 < full.labels.masks.float().mean() < 1


@pytest.mark.parametrize("change", [
    {"reweight_rounds": 0}, {"all_points": True}, {"conf_loss": False}, {"labels": "oracle"}])
def test_each_ablation_changes_what_is_trained(micro, full, tmp_path, change):
    _, views = micro
    gt = dict(gt_pts3d=views.pts3d, gt_valid=views.valid) if "labels" in change else {}
    module = fit(micro, tmp_path, **change, **gt)
    assert module.hparams[next(iter(change))] == next(iter(change.values()))
    a, b = adapter_tensors(full), adapter_tensors(module)
    assert any(not torch.allclose(a[n], b[n]) for n in a)
    if "reweight_rounds" in change:
        assert len(module.calibration.rounds) == 1 and len(full.calibration.rounds) == 2
        assert torch.equal(module.calibration.confidence_after, module.calibration.confidence_before)
    if "all_points" in change:
        assert module.labels.masks.all()
    if "conf_loss" in change:        # same labels, another loss
        assert torch.equal(module.labels.masks, full.labels.masks)
    if "labels" in change:           # ground truth at the pixels the pseudo-labels select
        assert module.labels.source == "oracle"
        assert torch.equal(module.labels.pts3d, views.pts3d)
        assert torch.equal(module.labels.masks, full.labels.masks & views.valid.bool())
        assert torch.allclose(module.labels.poses, views.poses, atol=1e-3)


def test_oracle_labels_need_ground_truth(micro, tmp_path):
    with pytest.raises(LoraKitError, match="oracle.*gt_pts3d"):
        fit(micro, tmp_path, labels="oracle")
    with pytest.raises(LoraKitError, match="'pseudo' or 'oracle'"):
        fit(micro, tmp_path, labels="teacher")


def test_a_training_step_lowers_the_loss_on_its_labels(micro):
    from lorakit.plugins.lora3d.inference import make_pairs
    from lorakit.plugins.lora3d.module import SelfCalibrationModule

    checkpoint, views = micro
    module = SelfCalibrationModule(checkpoint=checkpoint,
                                   **{**FAST, "adapter": dataclasses.replace(ADAPTER, rank=4)})
    edges = make_pairs(3)
    module.make_labels(views.images, edges)
    opt = torch.optim.Adam(module.adapters.parameters(), lr=1e-2)
    module.model.train()
    before, _ = module.labelled_loss(views.images, edges)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after, _ = module.labelled_loss(views.images, edges)
    assert after.item() < before.item()
    assert all(p.grad is None for n, p in module.model.named_parameters() if "lora_" not in n)


def test_fit_help_documents_the_ablation_switches(capsys):
    from lorakit.cli import main
    with pytest.raises(SystemExit):
        main(["lora3d", "fit", "--help"])
    text = capsys.readouterr().out
    for option in ("--model.reweight_rounds", "--model.all_points", "--model.conf_loss",
                   "--model.labels", "--trainer.gradient_clip_val"):
        assert option in text
