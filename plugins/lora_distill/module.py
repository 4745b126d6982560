r"""`DistillModule`: LoRA guidance distillation of a classifier-free-guided diffusion UNet.

Classifier-free guidance costs two UNet passes per denoising step. The student is
the teacher plus LoRA, with the guidance scale w as an extra input, trained to give
the guided prediction in one pass (guidance distillation, Meng et al. 2023, stage
one; the LoRA form is "LoRA-Enhanced Distillation on Guided Diffusion Models",
Golnari 2023):

    x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε,   t ~ U{0..T−1},   w ~ U[w_min, w_max]

    teacher (adapters off):   ε̃ = ε_u + w (ε_c − ε_u)          two passes, no grad
    student (adapters on):    ε_s = ε(x_t, t, c, emb(w))         one pass
    loss = ‖ε_s − ε̃‖²

The teacher is not a second model: it is the same UNet with its adapters switched
off (`with adapters.disabled():`), so the frozen weights are held once. w enters
through the UNet's time-conditioning projection ``time_embedding.cond_proj``
(diffusers' ``time_cond_proj_dim``, as latent consistency models take it); when the
base has none it is added at zero (see `lorakit.domains.imaging.guided_unet`) and
trained in full as a ``modules_to_save`` module, so it is saved in the adapter file.
At initialisation (B = 0, cond_proj = 0) the student is exactly the conditional
teacher ε_c.

x_0 comes from the data module's images when it has them (the digits default);
with conditioning only (class labels or prompt embeddings), x_0 is sampled from the
teacher itself with `x0_steps` guided DDIM steps at a random w in the range.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lorakit import load_adapter, read_adapter
from lorakit.adapters import matches
from lorakit.compress.quantize import quantize_like
from lorakit.config import LoRAConfig
from lorakit.domains.imaging.guided_unet import COND_PROJ, GuidedUNet, load_unet, unet_folder
from lorakit.domains.imaging.sampling import add_noise, ddim_sample, load_scheduler
from lorakit.domains.imaging.teacher import DEFAULT_DIR as EMBEDDED_TEACHER
from lorakit.domains.imaging.teacher import SCHEDULER_CONFIG
from lorakit.errors import LoraKitError
from lorakit.plugins.adapter_args import NO_GRADIENT_INIT, hparams_dict, plugin_adapter
from lorakit.training.module import AdapterModule

# attention projections and the paths that carry time, class and guidance conditioning
DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "*.to_out.0", "time_emb_proj",
                   "time_embedding.linear_1", "time_embedding.linear_2"]


#: LoRA r=8, alpha 8 on DEFAULT_TARGETS (those the UNet has), the guidance projection
#: trained in full
ADAPTER = LoRAConfig(rank=8, alpha=8.0, targets=list(DEFAULT_TARGETS),
                     modules_to_save=[COND_PROJ])
NO_DIFFUSERS_LAYOUT = ("fit also writes the student in diffusers' LoRA layout (diffusers_lora/, "
                       "from the PEFT export), and a mixture of experts has none: PEFT's "
                       "layout holds one B·A per module")


def check_guidance_range(w_min: float, w_max: float) -> None:
    if w_min < 1.0:
        raise LoraKitError(
            f"guidance range [{w_min}, {w_max}] goes below w = 1: w < 1 moves samples away "
            "from the condition (w = 0 is the unconditional model, w = 1 the conditional "
            "one); use guidance_min >= 1")
    if w_max < w_min:
        raise LoraKitError(f"guidance_max ({w_max}) is below guidance_min ({w_min})")


class DistillModule(AdapterModule):
    """Distil classifier-free guidance into LoRA adapters (one UNet pass per step).

    Args:
        pretrained: diffusers model folder (a UNet2DConditionModel / UNet2DModel saved
            with save_pretrained, or a pipeline folder whose unet/ is used). None: the
            embedded digits teacher.
        adapter: the adapter (any lorakit method: --model.adapter.method dora
            --model.adapter.rank 16); default LoRA r=8, alpha 8 on the attention
            projections and the time/class conditioning Linears (the default targets the
            UNet has). The guidance projection is always in its modules_to_save.
        guidance_min: smallest guidance scale w trained on (>= 1).
        guidance_max: largest w trained on.
        guidance_embed_dim: width of the guidance embedding (time_cond_proj_dim) when
            the base has no time-conditioning projection; ignored when it has one.
        null_class: label of the null class of a class-conditional UNet (default: the
            last class of num_class_embeds).
        adapter_file: a lorakit adapter file to start from (predict with a trained
            student).
        sample_steps: DDIM steps when sampling (predict, demo).
        x0_steps: guided DDIM steps of the teacher that make x_0 when the data module
            gives conditioning only (no images).
        predict_guidance: the w values `predict` samples grids for (default 1, 2, 3).
        predict_teacher: also sample the two-pass teacher in `predict`, for comparison.
        output_dir: where the adapter, its diffusers export (diffusers_lora/) and predict
            grids go; None: the run's folder under --trainer.default_root_dir.
        lr: learning rate of the adapter parameters.
        weight_decay: AdamW weight decay of the adapter parameters.
        optimizer: "adamw", "adam" or "sgd".
        lora: deprecated, use adapter (the same LoRAConfig).
    """

    def __init__(self, pretrained: str | None = None, adapter: LoRAConfig = ADAPTER,
                 guidance_min: float = 1.0, guidance_max: float = 3.0,
                 guidance_embed_dim: int = 32, null_class: int | None = None,
                 adapter_file: str | None = None, sample_steps: int = 25, x0_steps: int = 10,
                 predict_guidance: list[float] | None = None,
                 predict_teacher: bool = False, output_dir: str | None = None,
                 lr: float = 3e-3, weight_decay: float = 0.0, optimizer: str = "adamw",
                 lora: LoRAConfig | None = None) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                         output_dir=output_dir)
        check_guidance_range(guidance_min, guidance_max)
        predict_guidance = [1.0, 2.0, 3.0] if predict_guidance is None else predict_guidance
        for w in predict_guidance:
            check_guidance_range(w, w)
        if lora is not None:
            warnings.warn("lora-distill: model.lora is deprecated; use model.adapter "
                          "(--model.adapter.rank ...)", DeprecationWarning, stacklevel=2)
            adapter = lora
        adapter = plugin_adapter("lora-distill", adapter, refuse=NO_GRADIENT_INIT)
        # the deprecated key lives on in `adapter`
        self.save_hyperparameters(ignore=["lora"])
        self.pretrained = str(pretrained) if pretrained is not None else str(EMBEDDED_TEACHER)
        if pretrained is None and not (EMBEDDED_TEACHER / "config.json").is_file():
            raise LoraKitError(
                f"the embedded digits teacher is missing at {EMBEDDED_TEACHER}; rebuild it "
                "with `python -m lorakit.domains.imaging.teacher` (see its docstring)")
        self.guidance_min, self.guidance_max = float(guidance_min), float(guidance_max)
        self.sample_steps, self.x0_steps = int(sample_steps), int(x0_steps)
        self.predict_guidance = [float(w) for w in predict_guidance]
        self.predict_teacher = predict_teacher
        if adapter_file is not None:
            meta, _ = read_adapter(adapter_file)
            guidance_embed_dim = int(meta.get("extra", {}).get("guidance_embed_dim",
                                                               guidance_embed_dim))
        self.model: GuidedUNet = load_unet(self.pretrained, guidance_embed_dim, null_class)
        folder = unet_folder(self.pretrained)
        self.scheduler = load_scheduler(folder)
        if self.scheduler is None:
            rank_zero_warn(f"{folder} has no scheduler_config.json (nor a pipeline scheduler/);"
                           " using a DDIM scheduler with cosine betas, 1000 steps. If the "
                           "teacher was trained with another schedule, the targets are wrong.")
            self.scheduler = load_scheduler(folder, fallback=SCHEDULER_CONFIG)
        if self.scheduler.config.prediction_type != "epsilon":
            raise LoraKitError(f"{folder}: the scheduler predicts "
                               f"{self.scheduler.config.prediction_type!r}; lora-distill "
                               "distils ε-prediction UNets")
        if adapter_file is None and self.model.native and adapter.method == "mixture":
            raise LoraKitError(f"lora-distill: model.adapter.method 'mixture' is not available "
                               f"for a UNet2DConditionModel: {NO_DIFFUSERS_LAYOUT}")
        if adapter_file is not None:
            quantize_like(self.model.unet, adapter_file)    # a QLoRA file: its base as it was
            self.adapters = load_adapter(self.model.unet, adapter_file)
        else:
            adapter = self._config(adapter)
            self.attach_adapters(self.model.unet, adapter)
        self.hparams.adapter = hparams_dict(adapter)
        self.loss_history: list[tuple[int, float]] = []
        self._predictions: list[dict] = []

    def _config(self, adapter: LoRAConfig) -> LoRAConfig:
        """The default targets narrowed to those the UNet has; the guidance projection
        always trained in full."""
        if adapter.targets == DEFAULT_TARGETS:
            linears = [n for n, m in self.model.unet.named_modules()
                       if isinstance(m, torch.nn.Linear)]
            adapter.targets = [p for p in DEFAULT_TARGETS if any(matches(n, p) for n in linears)]
        if COND_PROJ not in adapter.modules_to_save:
            adapter.modules_to_save = [*adapter.modules_to_save, COND_PROJ]
        return adapter

    # --- the objective ----------------------------------------------------------------
    def _unpack(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        if "class_labels" in batch:
            cond = batch["class_labels"]
        elif "encoder_hidden_states" in batch:
            cond = batch["encoder_hidden_states"]
        else:
            raise LoraKitError("a lora-distill batch needs 'class_labels' or "
                               f"'encoder_hidden_states'; got keys {sorted(batch)}")
        self.model.check_cond(cond)
        return cond, batch.get("uncond_encoder_hidden_states")

    def teacher_eps(self, x_t, t, cond, w, uncond=None, batched: bool = False) -> torch.Tensor:
        """The guided teacher target: the same UNet with its adapters off, two passes."""
        with torch.no_grad(), self.adapters.disabled():
            return self.model.cfg(x_t, t, cond, w, uncond, batched=batched)

    def student_eps(self, x_t, t, cond, w) -> torch.Tensor:
        return self.model(x_t, t, cond, w)

    def sample_w(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(n, generator=generator)
        return (self.guidance_min + (self.guidance_max - self.guidance_min) * u).to(self.device)

    def distill_loss(self, batch: dict, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
        cond, uncond = self._unpack(batch)
        n = cond.shape[0]
        w = self.sample_w(n, generator)
        noise = batch.get("noise")
        if noise is None:
            noise = torch.randn((n, *self.model.sample_shape), generator=generator)
        noise = noise.to(self.device, self.model.dtype)
        x0 = batch.get("images")
        if x0 is None:
            x0 = self.teacher_x0(cond, w, uncond, generator)
        T = self.scheduler.config.num_train_timesteps
        t = torch.randint(0, T, (n,), generator=generator).to(self.device)
        x_t = add_noise(self.scheduler, x0.to(self.device, self.model.dtype), noise, t)
        target = self.teacher_eps(x_t, t, cond, w, uncond)
        pred = self.student_eps(x_t, t, cond, w)
        return F.mse_loss(pred.float(), target.float())

    @torch.no_grad()
    def teacher_x0(self, cond, w, uncond=None, generator=None) -> torch.Tensor:
        noise = torch.randn((cond.shape[0], *self.model.sample_shape), generator=generator)
        noise = noise.to(self.device, self.model.dtype)
        with self.adapters.disabled():
            return ddim_sample(lambda x, t: self.model.cfg(x, t, cond, w, uncond), noise,
                               self.scheduler, self.x0_steps)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.distill_loss(batch)
        if not torch.isfinite(loss):
            raise LoraKitError(
                f"lora-distill: the distillation loss is {loss.item()} at training step "
                f"{self.global_step} (batch {batch_idx}); training stopped. Lower the "
                "learning rate (--model.lr), check the teacher's outputs are finite, or use "
                "a wider precision.")
        self.loss_history.append((int(self.global_step), float(loss.detach())))
        self.log("train/loss", loss, prog_bar=True, batch_size=int(batch_size(batch)))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(1000 + batch_idx)  # same t, w every epoch
        loss = self.distill_loss(batch, generator=gen)
        self.log("val/loss", loss, prog_bar=True, batch_size=int(batch_size(batch)))

    # --- sampling ---------------------------------------------------------------------
    @contextlib.contextmanager
    def fused(self):
        """Adapters merged into the base weights: the student at the teacher's cost per pass."""
        was = self.adapters.merged
        self.adapters.merge()
        try:
            yield self
        finally:
            if not was:
                self.adapters.unmerge()

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, noise: torch.Tensor, w: float,
               teacher: bool = False, steps: int | None = None, batched_cfg: bool = False,
               uncond: torch.Tensor | None = None) -> torch.Tensor:
        """DDIM samples: the teacher with CFG (two passes per step) or the student (one)."""
        check_guidance_range(w, w)
        steps = steps or self.sample_steps
        noise = noise.to(self.device, self.model.dtype)
        cond = cond.to(self.device)
        if teacher:
            with self.adapters.disabled():
                return ddim_sample(lambda x, t: self.model.cfg(x, t, cond, w, uncond,
                                                               batched=batched_cfg),
                                   noise, self.scheduler, steps)
        return ddim_sample(lambda x, t: self.model(x, t, cond, w), noise, self.scheduler, steps)

    def on_predict_start(self) -> None:
        self._predictions = []
        self.adapters.merge()

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        cond, uncond = self._unpack(batch)
        noise = batch.get("noise")
        if noise is None:
            noise = torch.randn((cond.shape[0], *self.model.sample_shape),
                                generator=torch.Generator().manual_seed(batch_idx))
        out = {"cond": cond.cpu()}
        for w in self.predict_guidance:
            out[f"student_w{w:g}"] = self.sample(cond, noise, w, uncond=uncond).cpu()
            if self.predict_teacher:
                out[f"teacher_w{w:g}"] = self.sample(cond, noise, w, teacher=True,
                                                     uncond=uncond).cpu()
        self._predictions.append(out)
        return out

    def on_predict_end(self) -> None:
        from lorakit.domains.imaging.grid import save_grid

        self.adapters.unmerge()
        if not self._predictions:
            return
        out_dir = self.output_folder() / "samples"
        per_row = self._row_length()
        for key in self._predictions[0]:
            if key == "cond":
                continue
            images = torch.cat([p[key] for p in self._predictions])
            path = save_grid(images, out_dir / f"{key}.png", nrow=per_row)
            rank_zero_info(f"lora-distill: {len(images)} samples -> {path}")

    def _row_length(self) -> int:
        cond = torch.cat([p["cond"] for p in self._predictions])
        if cond.dim() == 1 and len(cond) > 1:
            changes = (cond[1:] != cond[:-1]).nonzero()
            if len(changes):
                return int(changes[0]) + 1
        return 10

    # --- saving the student -------------------------------------------------------------
    def adapter_metadata(self) -> dict:
        c = self.model.conditioning
        return {"plugin": "lora-distill", "pretrained": self.pretrained,
                "guidance_embed_dim": self.model.guidance_embed_dim,
                "guidance_embedding": "lcm-sinusoidal(w-1)",
                "guidance_range": [self.guidance_min, self.guidance_max],
                "conditioning": c.kind, "null_class": c.null_class,
                "unet_class": type(self.model.unet).__name__}

    def on_adapter_saved(self, path: Path) -> None:
        """A UNet2DConditionModel's student is also exported in diffusers' LoRA layout."""
        from .diffusers_export import export_diffusers

        if self.model.native:
            folder = export_diffusers(path, path.parent / "diffusers_lora")
            rank_zero_info(f"lora-distill: diffusers LoRA -> {folder}")

    def save_student(self, out_dir=None) -> dict[str, Path]:
        """The lorakit adapter file and, for UNet2DConditionModel, its diffusers export."""
        adapter = self.save_adapter(out_dir)
        paths = {"adapter": adapter}
        if self.model.native:
            paths["diffusers"] = adapter.parent / "diffusers_lora"
        return paths


def batch_size(batch: dict) -> int:
    for key in ("class_labels", "encoder_hidden_states", "images"):
        if key in batch:
            return len(batch[key])
    return 1
