"""`SelfCalibrationModule`: LoRA3D self-calibration as a Lightning module, the one training loop.

    on_fit_start   frozen DUSt3R (adapters off) over the scene's pair graph -> `before`
                   -> robust global alignment (align -> re-weight -> align) and the
                      pseudo-label masks -> `calibration`
                   -> pseudo-labels: the aligned points at the high-confidence pixels
                      (or, labels='oracle', ground truth at those same pixels) -> `labels`
    training_step  LoRA on a batch of pairs, DUSt3R's confidence-aware loss on the labels
                   (conf_loss=False: the plain regression error), AdamW with a cosine
                   schedule; gradient clipping is the Trainer's (default.yaml)
    on_fit_end     `AdapterModule` writes adapter.safetensors into the output folder
    predict        aligns the adapted model's predictions and writes cloud.ply, poses.json
                   and preview.png (depth, confidence before / after, a rendered view)

`lorakit lora3d fit`, `fit_scene` (fit.py), the demo and the benchmark all run this
module through `pl.Trainer`. After fit, `stats` holds the stage times (inference_s,
alignment_s, training_s) and `before` / `calibration` / `labels` what they came from.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from lorakit import load_adapter
from lorakit.compress.quantize import quantize_like
from lorakit.config import LoRAConfig
from lorakit.errors import LoraKitError
from lorakit.plugins.adapter_args import NO_GRADIENT_INIT, hparams_dict, plugin_adapter
from lorakit.training.module import AdapterModule

from .align import robust_alignment
from .embedded import EMBEDDED, load_base
from .inference import make_pairs, pairwise_inference, predict_pairs
from .loss import confidence_loss, regression_errors
from .outputs import preview, write_ply, write_poses
from .pairs import CalibrationTargets, PairPredictions
from .reweight import PseudoLabels, image_confidence, oracle_labels, pseudo_labels

LABEL_SOURCES = ("pseudo", "oracle")
#: the 80 nn.Linear of the tiny model's transformer blocks (heads and embeddings excluded)
LORA_TARGETS = ["enc_blocks.*.attn.qkv", "enc_blocks.*.attn.proj", "enc_blocks.*.mlp.fc1",
                "enc_blocks.*.mlp.fc2", "dec_blocks*.attn.qkv", "dec_blocks*.attn.proj",
                "dec_blocks*.cross_attn.projq", "dec_blocks*.cross_attn.projk",
                "dec_blocks*.cross_attn.projv", "dec_blocks*.cross_attn.proj",
                "dec_blocks*.mlp.fc1", "dec_blocks*.mlp.fc2"]
#: LoRA r=8, alpha 16 on the transformer blocks' nn.Linear (heads and embeddings frozen)
ADAPTER = LoRAConfig(rank=8, alpha=16.0, targets=list(LORA_TARGETS))


def regression_loss(pred, gt, valid) -> torch.Tensor:
    """Sum over views of the mean ||pred/z - gt/zgt|| over the labelled pixels: DUSt3R's
    regression term without the confidence (the ablation conf_loss=False)."""
    errs = regression_errors(pred, gt, valid)
    return sum((e * m.float()).sum() / m.float().sum().clamp(min=1e-8)
               for e, m in zip(errs, valid))


class SelfCalibrationModule(AdapterModule):
    """LoRA3D self-calibration of a DUSt3R checkpoint on one scene.

    Args:
        checkpoint: DUSt3R checkpoint ({"args", "model"}, upstream format); None is the
            embedded tiny model.
        adapter: the adapter (any lorakit method: --model.adapter.method dora
            --model.adapter.rank 16); default LoRA r=8, alpha 16 on the transformer
            blocks' nn.Linear.
        align_iters: iterations of the first global alignment.
        round_iters: iterations of each re-weighting round.
        align_lr: Adam learning rate of the global alignment.
        reweight_rounds: confidence re-weighting rounds (0: none, the ablation "no
            re-weighting": plain alignment, labels from the raw confidence).
        mu_factor: robust residual scale, times the median residual.
        conf_threshold: keep pixels whose calibrated confidence exceeds it (None: use
            keep_fraction).
        keep_fraction: fraction of each image kept as pseudo-labels.
        all_points: every pixel is a label (the ablation "all points").
        labels: 'pseudo' (the method: aligned points) or 'oracle' (the synthetic scene's
            ground-truth points at the same pixels; needs ground truth, a diagnostic).
        conf_loss: DUSt3R's confidence-aware loss; False is the ablation "no confidence
            in the loss" (plain regression error on the labels).
        loss_alpha: weight of -log(confidence) in the loss.
        init: alignment initialisation, 'mst' (falls back to 'random' on a NaN focal).
        backend: aligner, 'auto', 'native' or 'upstream' (mini-dust3r's PointCloudOptimizer).
        adapter_file: an adapter file to load before predicting.
        output_dir: where fit writes adapter.safetensors and predict writes cloud.ply,
            poses.json, preview.png; None: the run's folder under
            --trainer.default_root_dir.
        lr: peak adapter learning rate (cosine decay to zero over the run's steps).
        rank: deprecated, use adapter.rank.
        alpha: deprecated, use adapter.alpha.
        targets: deprecated, use adapter.targets.
    """

    def __init__(self, checkpoint: str | None = None, adapter: LoRAConfig = ADAPTER,
                 align_iters: int = 150,
                 round_iters: int = 50, align_lr: float = 0.01, reweight_rounds: int = 2,
                 mu_factor: float = 1.0, conf_threshold: float | None = None,
                 keep_fraction: float = 0.5, all_points: bool = False, labels: str = "pseudo",
                 conf_loss: bool = True, loss_alpha: float = 0.2, init: str = "mst",
                 backend: str = "auto", adapter_file: str | None = None,
                 output_dir: str | None = None, lr: float = 2e-3, rank: int | None = None,
                 alpha: float | None = None, targets: list[str] | None = None) -> None:
        super().__init__(lr=lr, weight_decay=0.0, optimizer="adamw", output_dir=output_dir)
        if labels not in LABEL_SOURCES:
            raise LoraKitError(f"labels must be 'pseudo' or 'oracle', got {labels!r}")
        if reweight_rounds < 0:
            raise LoraKitError(f"reweight_rounds must be >= 0, got {reweight_rounds}")
        adapter = plugin_adapter("lora3d", adapter, refuse=NO_GRADIENT_INIT, deprecated={
            "rank": ("rank", rank), "alpha": ("alpha", alpha), "targets": ("targets", targets)})
        # the deprecated flat keys live on in `adapter`
        self.save_hyperparameters(ignore=["rank", "alpha", "targets"])
        self.hparams.adapter = hparams_dict(adapter)
        self.checkpoint = checkpoint
        self.label_source = labels
        self.model, self.model_args = load_base(checkpoint)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.attach_adapters(self.model, adapter)
        if adapter_file is not None:
            self._load_adapter(adapter_file)
        self.before: PairPredictions | None = None       # the frozen model's predictions
        self.calibration: CalibrationTargets | None = None   # robust alignment and label masks
        self.labels: PseudoLabels | None = None          # what training_step fits
        self.stats: dict = {}

    def _load_adapter(self, path) -> None:
        # load into a fresh copy of the frozen base: the file's config decides the layers
        self.adapters.detach()
        quantize_like(self.model, path)    # a QLoRA file: its base as it was
        self.adapters = load_adapter(self.model, path)

    # --- fit -------------------------------------------------------------------------
    def _scene(self):
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or getattr(dm, "images", None) is None:
            raise LoraKitError("SelfCalibrationModule needs a SceneDataModule (set up) with "
                               "the scene's images")
        return dm

    def _check_size(self, images) -> None:
        want = tuple(self.model_args.get("img_size", (images.shape[1], images.shape[2])))
        if tuple(images.shape[1:3]) != tuple(want[:2]):
            raise LoraKitError(f"the images are {images.shape[1]}x{images.shape[2]} but the "
                               f"DUSt3R checkpoint expects {want[0]}x{want[1]}: set "
                               f"--data.size {want[0]}")

    def make_labels(self, images: torch.Tensor, edges, truth=None) -> PseudoLabels:
        """Inference with the adapters off, robust alignment, label selection (timed)."""
        hp = self.hparams
        if self.label_source == "oracle" and truth is None:
            raise LoraKitError("labels='oracle' trains on ground-truth points and this scene "
                               "has none: pass gt_pts3d (and gt_valid) to fit_scene, or fit "
                               "a synthetic scene (no --data.images)")
        t = time.perf_counter()
        with self.adapters.disabled():
            self.before = pairwise_inference(self.model, images.to(self.device), edges).to("cpu")
        t_inf = time.perf_counter() - t
        t = time.perf_counter()
        self.calibration = robust_alignment(
            self.before, rounds=hp.reweight_rounds, niter=hp.align_iters,
            niter_round=hp.round_iters, lr=hp.align_lr, init=hp.init, backend=hp.backend,
            mu_factor=hp.mu_factor, threshold=hp.conf_threshold, keep_fraction=hp.keep_fraction)
        labels = pseudo_labels(self.calibration, hp.all_points)
        if self.label_source == "oracle":
            labels = oracle_labels(labels, truth.pts3d, truth.valid, truth.poses)
        a = self.calibration.alignment
        self.stats = {"inference_s": t_inf, "alignment_s": time.perf_counter() - t,
                      "backend": a.backend, "alignment_rounds": self.calibration.rounds,
                      "alignment_notes": a.notes, "labels": labels.source,
                      "pseudo_label_fraction": float(labels.masks.float().mean())}
        for note in a.notes:
            print(f"lora3d: {note}", flush=True)
        self.labels = labels
        return labels

    def on_fit_start(self) -> None:
        super().on_fit_start()
        dm = self._scene()
        self._check_size(dm.images)
        self.make_labels(dm.images, dm.edges, dm.truth)
        self.model.train()

    def on_train_start(self) -> None:
        self._t_train = time.perf_counter()

    def on_train_end(self) -> None:
        self.stats["training_s"] = time.perf_counter() - self._t_train

    def labelled_loss(self, images: torch.Tensor, edges) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, regression error) of the adapted model on `edges` against the labels."""
        if self.labels is None:
            raise LoraKitError("labels are missing: on_fit_start (or make_labels) did not run")
        o = predict_pairs(self.model, images.to(self.device), edges, batch=len(edges))
        gi, gj, mi, mj = (t.to(self.device) for t in self.labels.targets(edges))
        pred, gt, valid = [o["pts_i"], o["pts_j"]], [gi, gj], [mi, mj]
        if not self.hparams.conf_loss:
            loss = regression_loss(pred, gt, valid)
            return loss, loss.detach()
        loss, parts = confidence_loss(pred, [o["conf_i"], o["conf_j"]], gt, valid,
                                      self.hparams.loss_alpha)
        return loss, parts["regr"]

    def training_step(self, batch, batch_idx):
        edges = [tuple(int(x) for x in e) for e in batch]
        loss, regr = self.labelled_loss(self._scene().images, edges)
        if not torch.isfinite(loss):
            raise LoraKitError(f"LoRA fine-tuning diverged at step {self.global_step} "
                               f"(loss {loss.detach().item()})")
        self.log("train_loss", loss, prog_bar=True, batch_size=len(edges))
        self.log("train_regr", regr, batch_size=len(edges))
        return loss

    def configure_optimizers(self):
        """AdamW over the adapters, lr decayed by a half cosine to zero at the last step."""
        opt = super().configure_optimizers()
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def adapter_metadata(self) -> dict:
        return {"plugin": "lora3d", "base_model": self.model_args,
                "checkpoint": self.checkpoint or EMBEDDED.name, "steps": int(self.global_step),
                "calibration": dict(self.hparams), "stats": self.stats}

    # --- predict -----------------------------------------------------------------------
    def predict_step(self, batch, batch_idx=0):
        images, names = batch["images"], batch["names"]
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        edges = dm.edges if dm is not None and dm.edges else make_pairs(images.shape[0])
        return self.reconstruct(images, names, edges, self.output_folder())

    def reconstruct(self, images, names, edges, out_dir) -> dict:
        # Lightning predicts under inference_mode; the aligner optimises, so leave it
        with torch.inference_mode(False), torch.enable_grad():
            return self._reconstruct(images.clone(), names, edges, out_dir)

    def _reconstruct(self, images, names, edges, out_dir) -> dict:
        self._check_size(images)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with self.adapters.disabled():
            before = pairwise_inference(self.model, images.to(self.device), edges).to("cpu")
        after = pairwise_inference(self.model, images.to(self.device), edges).to("cpu")
        hp = self.hparams
        a = robust_alignment(after, rounds=0, niter=hp.align_iters, lr=hp.align_lr,
                             init=hp.init, backend=hp.backend).alignment
        n = images.shape[0]
        conf_b = image_confidence(edges, before.conf_i, before.conf_j, n, "max")
        conf_a = image_confidence(edges, after.conf_i, after.conf_j, n, "max")
        images = images.cpu()
        ply = write_ply(out / "cloud.ply", a.pts3d, images)
        poses = write_poses(out / "poses.json", a.poses, a.focals, list(names),
                            tuple(images.shape[1:3]), {"alignment_loss": a.loss,
                                                       "init": a.init, "backend": a.backend,
                                                       "notes": a.notes})
        png = preview(out / "preview.png", images, a.depths, conf_b, conf_a, a.pts3d, a.poses,
                      float(a.focals.mean()) * 1.5, "lora3d: aligned with the adapted model")
        return {"ply": str(ply), "poses": str(poses), "preview": str(png),
                "alignment_loss": a.loss}
