"""lora-distill: the student is the teacher plus LoRA, and learns the guided prediction.

A tiny random class-conditional UNet2DConditionModel (8x8, ~40 k parameters) saved with
save_pretrained stands in for the teacher, so every test runs in seconds.
"""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import UNet2DConditionModel  # noqa: E402

from lorakit.domains.imaging.teacher import build_unet, scheduler  # noqa: E402
from lorakit.errors import AdapterMismatchError, CheckpointError, LoraKitError  # noqa: E402
from lorakit.plugins.lora_distill.module import DistillModule  # noqa: E402

torch.set_num_threads(1)
B = 6


def save_tiny(folder, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1)
    cfg.update(overrides)
    unet = build_unet(**cfg)
    unet.save_pretrained(folder)
    scheduler().save_config(folder)
    return unet


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    save_tiny(folder)
    return folder


@pytest.fixture
def module(teacher_dir):
    torch.manual_seed(0)
    return DistillModule(pretrained=str(teacher_dir), lr=3e-3)


def reference(teacher_dir):
    """The teacher as a diffusers user loads it: untouched by lorakit."""
    return UNet2DConditionModel.from_pretrained(teacher_dir).eval()


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 1, 8, 8, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    y = torch.randint(0, 10, (B,), generator=g)
    return x, t, y


def perturb(module, seed=1, scale=0.1):
    """Give the adapters and the guidance projection non-zero weights, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.adapters.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def batch(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    return {"class_labels": torch.randint(0, 10, (n,), generator=g),
            "images": torch.rand(n, 1, 8, 8, generator=g) * 2 - 1,
            "noise": torch.randn(n, 1, 8, 8, generator=g)}


# --- the teacher is the student with its adapters off -------------------------------
def test_adapters_disabled_is_the_teacher_exactly(module, teacher_dir):
    perturb(module)
    ref = reference(teacher_dir)
    x, t, y = inputs()
    null = torch.full_like(y, 10)
    with torch.no_grad():
        want_c = ref(x, t, None, class_labels=y).sample
        want_u = ref(x, t, None, class_labels=null).sample
        with module.adapters.disabled():
            got_c = module.model(x, t, y)
        got_cfg = module.teacher_eps(x, t, y, 2.5)
        student = module.student_eps(x, t, y, 2.5)
    assert torch.equal(got_c, want_c)
    assert torch.equal(got_cfg, want_u + 2.5 * (want_c - want_u))
    assert not torch.allclose(student, got_cfg, atol=1e-4)  # the adapters do act when on


def test_student_at_init_is_the_conditional_teacher(module, teacher_dir):
    ref = reference(teacher_dir)
    x, t, y = inputs()
    with torch.no_grad():
        want = ref(x, t, None, class_labels=y).sample
        for w in (1.0, 2.0, 3.0):
            got = module.student_eps(x, t, y, torch.full((B,), w))
            assert torch.equal(got, want), w
    assert module.model.unet.config.time_cond_proj_dim == 32
    assert not module.model.unet.time_embedding.cond_proj.weight.detach().any()


def test_guidance_projection_is_trained_and_saved_with_the_adapter(module):
    names = dict(module.adapters.named_parameters())
    assert "time_embedding.cond_proj.weight" in names
    assert names["time_embedding.cond_proj.weight"].requires_grad
    assert not module.model.unet.conv_in.weight.requires_grad


def test_a_few_distillation_steps_lower_the_loss(module):
    fixed = batch()

    def loss():
        with torch.no_grad():
            return float(module.distill_loss(fixed, torch.Generator().manual_seed(0)))

    before = loss()
    opt = module.configure_optimizers()
    for _ in range(40):
        value = module.distill_loss(fixed, torch.Generator().manual_seed(0))
        opt.zero_grad()
        value.backward()
        opt.step()
    after = loss()
    assert after < 0.7 * before, (before, after)


def test_fused_and_unfused_sampling_agree(module):
    perturb(module, scale=0.05)
    y = torch.arange(4)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    unfused = module.sample(y, noise, 2.0, steps=5)
    with module.fused():
        assert module.adapters.merged
        fused = module.sample(y, noise, 2.0, steps=5)
    assert not module.adapters.merged
    torch.testing.assert_close(fused, unfused, atol=2e-5, rtol=0)
    teacher = module.sample(y, noise, 2.0, steps=5, teacher=True)
    batched = module.sample(y, noise, 2.0, steps=5, teacher=True, batched_cfg=True)
    torch.testing.assert_close(batched, teacher, atol=2e-5, rtol=0)
    assert (fused - teacher).abs().max() > 1e-3  # the perturbed student is not the teacher


def test_diffusers_round_trip_gives_the_same_outputs(module, teacher_dir, tmp_path):
    from lorakit.domains.imaging.guided_unet import guidance_embedding
    from lorakit.plugins.lora_distill.diffusers_export import WEIGHT_NAME, load_student

    perturb(module, scale=0.05)
    paths = module.save_student(tmp_path)
    folder = paths["diffusers"]
    from safetensors import safe_open
    with safe_open(str(folder / WEIGHT_NAME), framework="pt") as f:
        keys = list(f.keys())
        header = json.loads(f.metadata()["lora_adapter_metadata"])
    assert all(k.startswith("unet.") for k in keys)
    assert "unet.time_embedding.cond_proj.weight" in keys
    assert "unet.down_blocks.1.attentions.0.to_q.lora_A.weight" in keys
    assert header["unet.modules_to_save"] == ["time_embedding.cond_proj"]

    unet = load_student(teacher_dir, folder).eval()
    x, t, y = inputs(5)
    w = torch.linspace(1, 3, B)
    with torch.no_grad():
        ours = module.student_eps(x, t, y, w)
        theirs = unet(x, t, None, class_labels=y, timestep_cond=guidance_embedding(w, 32)).sample
        unet.disable_lora()
        teacher = unet(x, t, None, class_labels=y).sample
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), module.adapters.disabled():
        torch.testing.assert_close(teacher, module.model(x, t, y), atol=1e-6, rtol=0)


def test_adapter_file_reloads_the_same_student(module, teacher_dir, tmp_path):
    perturb(module, scale=0.05)
    path = module.save_student(tmp_path)["adapter"]
    again = DistillModule(pretrained=str(teacher_dir), adapter_file=str(path))
    x, t, y = inputs(2)
    with torch.no_grad():
        assert torch.equal(again.student_eps(x, t, y, 2.0), module.student_eps(x, t, y, 2.0))


# --- bad input ------------------------------------------------------------------------
def test_folder_that_is_not_a_diffusers_unet(tmp_path):
    with pytest.raises(CheckpointError, match="not a diffusers UNet folder"):
        DistillModule(pretrained=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(CheckpointError, match="_class_name='AutoencoderKL'"):
        DistillModule(pretrained=str(tmp_path))
    with pytest.raises(CheckpointError, match="does not exist"):
        DistillModule(pretrained=str(tmp_path / "nowhere"))


def test_unet_without_weights_file(tmp_path):
    save_tiny(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no diffusion_pytorch_model.safetensors"):
        DistillModule(pretrained=str(tmp_path))


def test_unet_without_class_or_text_conditioning(tmp_path):
    save_tiny(tmp_path, num_class_embeds=None)
    with pytest.raises(LoraKitError, match="neither class nor text conditioning"):
        DistillModule(pretrained=str(tmp_path))


@pytest.mark.parametrize("w_min, w_max", [(0.5, 3.0), (0.0, 2.0), (2.0, 1.5)])
def test_guidance_range_below_one_or_reversed(teacher_dir, w_min, w_max):
    with pytest.raises(LoraKitError, match="guidance"):
        DistillModule(pretrained=str(teacher_dir), guidance_min=w_min, guidance_max=w_max)


def test_sampling_with_w_below_one_is_refused(module):
    with pytest.raises(LoraKitError, match="below w = 1"):
        module.sample(torch.arange(2), torch.randn(2, 1, 8, 8), 0.5)


def test_adapter_of_another_base_is_refused(module, tmp_path):
    other = tmp_path / "other"
    save_tiny(other, block_out_channels=(16, 16))
    path = module.save_student(tmp_path / "out")["adapter"]
    with pytest.raises(AdapterMismatchError, match="another base model"):
        DistillModule(pretrained=str(other), adapter_file=str(path))


def test_nan_loss_stops_training_naming_the_step(module):
    import lightning.pytorch as pl

    from lorakit.plugins.lora_distill.data import ConditioningDataModule

    class Tiny(ConditioningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader([batch(i, n=4) for i in range(8)],
                                               batch_size=None)

    trainer = pl.Trainer(max_steps=5, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=None)

    class Poison(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3:
                with torch.no_grad():
                    pl_module.model.unet.time_embedding.cond_proj.weight.fill_(float("nan"))

    trainer.callbacks.append(Poison())
    with pytest.raises(LoraKitError, match="nan at training step 3"):
        trainer.fit(module, datamodule=Tiny())


def test_labels_of_another_class_table_are_refused(module):
    bad = batch()
    bad["class_labels"] = torch.full((16,), 11)
    with pytest.raises(LoraKitError, match="outside 0..10"):
        module.distill_loss(bad)


# --- the command line ---------------------------------------------------------------------
def test_default_config_fits_and_predicts_through_lightning_cli(teacher_dir, tmp_path):
    """`lorakit lora-distill fit/predict` is LightningCLI over these classes and default.yaml;
    here data-free (class labels only: x_0 comes from the teacher)."""
    from pathlib import Path

    from lightning.pytorch.cli import LightningCLI

    from lorakit.plugins.lora_distill.data import ConditioningDataModule

    config = Path(__file__).parents[3] / "plugins" / "lora_distill" / "default.yaml"
    common = ["--config", str(config), f"--model.pretrained={teacher_dir}",
              f"--model.output_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}",
              "--model.sample_steps=3", "--model.x0_steps=2", "--data.source=labels",
              "--data.sample_shape=[1,8,8]", "--data.batch_size=8", "--data.epoch_size=16",
              "--data.val_size=8", "--data.predict_per_class=2", "--trainer.logger=false",
              "--trainer.enable_progress_bar=false"]
    LightningCLI(DistillModule, ConditioningDataModule,
                 save_config_callback=None, args=["fit", *common, "--trainer.max_steps=3", "--trainer.val_check_interval=2",
                       "--trainer.enable_checkpointing=false"])
    adapter = tmp_path / "adapter.safetensors"
    assert adapter.is_file()
    assert (tmp_path / "diffusers_lora" / "pytorch_lora_weights.safetensors").is_file()
    LightningCLI(DistillModule, ConditioningDataModule, save_config_callback=None,
                 args=["predict", *common, f"--model.adapter_file={adapter}",
                       "--model.predict_guidance=[2.0]"])
    for name in ("student_w2.png", "teacher_w2.png"):
        assert (tmp_path / "samples" / name).is_file()


def test_lorakit_fit_writes_the_adapter_under_default_root_dir_and_nothing_in_runs(
        teacher_dir, tmp_path):
    """`lorakit lora-distill fit --trainer.default_root_dir X`, run as a user runs it: the
    adapter and its diffusers export land in X's run folder, not in ./runs of the cwd."""
    import subprocess
    import sys
    from pathlib import Path

    root, cwd = tmp_path / "X", tmp_path / "cwd"
    cwd.mkdir()
    lorakit = str(Path(sys.executable).with_name("lorakit"))
    proc = subprocess.run(
        [lorakit, "lora-distill", "fit", "--trainer.default_root_dir", str(root),
         f"--model.pretrained={teacher_dir}", "--model.x0_steps=2", "--data.source=labels",
         "--data.sample_shape=[1,8,8]", "--data.batch_size=8", "--data.epoch_size=16",
         "--data.val_size=8", "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
         "--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false",
         "--threads", "1"],
        cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = root / "lightning_logs" / "version_0"
    assert sorted(p.relative_to(root) for p in root.rglob("*.safetensors")) == [
        run.relative_to(root) / "adapter.safetensors",
        run.relative_to(root) / "diffusers_lora" / "pytorch_lora_weights.safetensors"]
    assert f"written to {run / 'adapter.safetensors'}" in proc.stdout + proc.stderr
    assert list(cwd.iterdir()) == []


def test_unet2dmodel_teacher_distils_too(tmp_path):
    """UNet2DModel has no time_cond_proj_dim: the projection is added beside it (pre-hook)."""
    import diffusers

    torch.manual_seed(0)
    plain = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
                                  block_out_channels=(8, 16), layers_per_block=1,
                                  down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                  up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                                  norm_num_groups=8, attention_head_dim=8, num_class_embeds=5)
    plain.save_pretrained(tmp_path)
    scheduler().save_config(tmp_path)
    module = DistillModule(pretrained=str(tmp_path))
    x, t, y = inputs()
    y = y % 4
    with torch.no_grad():
        assert torch.equal(module.student_eps(x, t, y, 2.0), plain(x, t, class_labels=y).sample)
    assert "time_embedding.cond_proj.weight" in dict(module.adapters.named_parameters())
    loss = module.distill_loss({**batch(), "class_labels": batch()["class_labels"] % 4})
    loss.backward()
    assert module.model.unet.time_embedding.cond_proj.weight.grad is not None
    paths = module.save_student(tmp_path / "out")
    assert set(paths) == {"adapter"}  # no diffusers LoRA layout for UNet2DModel


def test_diffusers_export_refuses_an_adapter_of_another_plugin(tmp_path):
    from lorakit import LoRAConfig, attach
    from lorakit.errors import AdapterFileError
    from lorakit.plugins.lora_distill.diffusers_export import export_diffusers

    net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    attach(net, LoRAConfig(rank=2, targets=["0"])).save(tmp_path / "a.safetensors",
                                                       {"plugin": "lorabert"})
    with pytest.raises(AdapterFileError, match="not a lora-distill adapter"):
        export_diffusers(tmp_path / "a.safetensors", tmp_path / "out")


@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_its_report(tmp_path):
    from lorakit.plugins.lora_distill.demo import demo

    figures = demo(tmp_path, threads=1, steps=30, per_class=2, sample_steps=5)
    for name in ("report.md", "results.json", "loss_curve.png", "adapter.safetensors",
                 "grids/student_w2.png", "grids/teacher_cfg_w2.png"):
        assert (tmp_path / name).exists(), name
    assert figures["loss_last25"] < figures["loss_first25"]


def test_text_conditioned_unet_distils_with_the_empty_prompt_as_null(tmp_path):
    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1,
                         block_out_channels=(8, 16), layers_per_block=1,
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                         cross_attention_dim=12, attention_head_dim=4,
                         norm_num_groups=8).save_pretrained(tmp_path)
    scheduler().save_config(tmp_path)
    module = DistillModule(pretrained=str(tmp_path))
    assert module.model.conditioning.kind == "text"
    assert any(p.endswith("attn2.to_k") for p in module.adapters.layers)  # cross-attention
    g = torch.Generator().manual_seed(0)
    emb, empty = torch.randn(4, 3, 12, generator=g), torch.randn(1, 3, 12, generator=g)
    x, t = torch.randn(4, 1, 8, 8, generator=g), torch.tensor([1, 200, 500, 999])
    with torch.no_grad():
        want_c = module.model(x, t, emb)
        want_u = module.model(x, t, empty.expand(4, -1, -1))
        assert torch.equal(module.student_eps(x, t, emb, 2.0), want_c)
        torch.testing.assert_close(module.teacher_eps(x, t, emb, 2.0, uncond=empty),
                                   want_u + 2.0 * (want_c - want_u))
    loss = module.distill_loss({"encoder_hidden_states": emb, "uncond_encoder_hidden_states": empty,
                                "images": torch.rand(4, 1, 8, 8) * 2 - 1,
                                "noise": torch.randn(4, 1, 8, 8)})
    loss.backward()
    assert float(loss) > 0
