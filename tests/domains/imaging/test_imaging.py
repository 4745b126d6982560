"""domains/imaging: digits, the shipped teacher and classifier, the quality metric, guided UNets."""
from __future__ import annotations

import json

import pytest
import torch

from lorakit.domains.imaging.digits import load_digits
from lorakit.domains.imaging.quality import (
    WEIGHTS,
    DigitScorer,
    frechet_distance,
    held_out_accuracy,
    load_classifier,
)

torch.set_num_threads(1)


def test_digits_are_16x16_in_minus_one_one_with_a_stratified_held_out_split():
    train, test, full = load_digits("train"), load_digits("test"), load_digits("all")
    assert full.images.shape == (1797, 1, 16, 16)
    assert float(full.images.min()) == -1.0 and float(full.images.max()) <= 1.0
    assert len(train) + len(test) == len(full)
    for c in range(10):
        share = float((test.labels == c).sum()) / float((full.labels == c).sum())
        assert 0.18 < share < 0.22


def test_shipped_classifier_reads_held_out_digits():
    assert WEIGHTS.is_file()
    assert held_out_accuracy(load_classifier()) >= 96.0


def test_frechet_distance_is_zero_for_the_same_set_and_the_gaussian_formula_otherwise():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g)
    assert abs(frechet_distance(a, a)) < 1e-8
    b = torch.randn(4000, 3, generator=g) * 2 + torch.tensor([1.0, 0.0, 0.0])
    # ‖μ₁−μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½) = 1 + 3·(1 + 4 − 2·2) = 4
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.1)


def test_scorer_tells_real_digits_from_noise():
    scorer = DigitScorer()
    real = load_digits("test")
    good = scorer(real.images, real.labels)
    noise = scorer(torch.rand(len(real), 1, 16, 16) * 2 - 1, real.labels)
    assert good.accuracy > 95 and noise.accuracy < 30
    assert good.frechet * 20 < noise.frechet


def test_grid_png_has_one_tile_per_image(tmp_path):
    from PIL import Image

    from lorakit.domains.imaging.grid import save_grid

    path = save_grid(torch.zeros(23, 1, 16, 16), tmp_path / "g.png", nrow=10, scale=2, pad=1)
    w, h = Image.open(path).size
    assert (w, h) == (10 * 33 + 1, 3 * 33 + 1)


# --- guided UNets ---------------------------------------------------------------------
diffusers = pytest.importorskip("diffusers")


def test_guidance_embedding_is_diffusers_lcm_embedding_of_w_minus_one():
    from lorakit.domains.imaging.guided_unet import guidance_embedding

    lcm = pytest.importorskip("diffusers.pipelines.latent_consistency_models."
                              "pipeline_latent_consistency_text2img")
    w = torch.tensor([1.0, 1.5, 3.0, 7.5])
    want = lcm.LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w - 1, 32)
    torch.testing.assert_close(guidance_embedding(w, 32), want)


def test_pipeline_folder_uses_its_unet(tmp_path):
    from lorakit.domains.imaging.guided_unet import load_unet
    from lorakit.domains.imaging.teacher import build_unet

    unet = build_unet(sample_size=8, block_out_channels=(8, 16), layers_per_block=1)
    unet.save_pretrained(tmp_path / "unet")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "DDIMPipeline"}))
    guided = load_unet(tmp_path)
    assert guided.conditioning.kind == "class" and guided.conditioning.null_class == 10
    assert guided.sample_shape == (1, 8, 8)


def class_conditional_unet2d():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
                                 block_out_channels=(8, 16), layers_per_block=1,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                                 norm_num_groups=8, attention_head_dim=8, num_class_embeds=5)


def test_unet2dmodel_takes_guidance_through_an_added_zero_projection(tmp_path):
    from lorakit.domains.imaging.guided_unet import load_unet

    plain = class_conditional_unet2d().eval()
    plain.save_pretrained(tmp_path)
    guided = load_unet(tmp_path).eval()
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([10, 500, 900]), torch.tensor([0, 1, 3])
    with torch.no_grad():
        want = plain(x, t, class_labels=y).sample
        assert torch.equal(guided(x, t, y), want)
        assert torch.equal(guided(x, t, y, 2.5), want)  # zero projection: w has no effect yet
        guided.unet.time_embedding.cond_proj.weight.normal_()
        assert not torch.allclose(guided(x, t, y, 2.5), want)
        assert torch.equal(guided(x, t, y), want)  # without w the hook adds nothing


def test_unet2dmodel_without_classes_has_nothing_to_guide(tmp_path):
    from lorakit.domains.imaging.guided_unet import load_unet
    from lorakit.errors import LoraKitError

    diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
                          block_out_channels=(8, 16), layers_per_block=1,
                          down_block_types=("DownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "UpBlock2D"),
                          norm_num_groups=8).save_pretrained(tmp_path)
    with pytest.raises(LoraKitError, match="neither class nor text conditioning"):
        load_unet(tmp_path)


def test_text_conditioned_unet_is_recognised_with_zero_null_embedding():
    from lorakit.domains.imaging.guided_unet import build_guided

    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=12,
        attention_head_dim=4, norm_num_groups=8)
    guided = build_guided(unet).eval()
    assert guided.conditioning.kind == "text"
    emb = torch.randn(2, 3, 12)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        eps = guided.cfg(x, t, emb, 2.0)
        u, c = guided(x, t, torch.zeros_like(emb)), guided(x, t, emb)
    torch.testing.assert_close(eps, u + 2.0 * (c - u))


# --- the shipped teacher ----------------------------------------------------------------
def test_shipped_teacher_is_a_diffusers_folder_of_the_documented_size():
    from lorakit.domains.imaging.teacher import DEFAULT_DIR

    unet = diffusers.UNet2DConditionModel.from_pretrained(DEFAULT_DIR)
    n = sum(p.numel() for p in unet.parameters())
    assert 350_000 < n < 450_000
    assert unet.config.num_class_embeds == 11 and unet.config.block_out_channels == [16, 32, 32]
    assert unet.config.time_cond_proj_dim is None  # the plugin adds it
    size = (DEFAULT_DIR / "diffusion_pytorch_model.safetensors").stat().st_size
    assert size < 5_000_000


def test_shipped_teacher_draws_the_digits_it_is_asked_for():
    from lorakit.domains.imaging.guided_unet import load_unet
    from lorakit.domains.imaging.sampling import ddim_sample, load_scheduler
    from lorakit.domains.imaging.teacher import DEFAULT_DIR

    guided = load_unet(DEFAULT_DIR).eval()
    sched = load_scheduler(DEFAULT_DIR)
    y = torch.arange(10).repeat_interleave(5)
    noise = torch.randn(50, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    images = ddim_sample(lambda x, t: guided.cfg(x, t, y, 2.0), noise, sched, steps=20)
    again = ddim_sample(lambda x, t: guided.cfg(x, t, y, 2.0), noise, sched, steps=20)
    assert torch.equal(images, again)
    assert DigitScorer()(images, y).accuracy >= 90.0
