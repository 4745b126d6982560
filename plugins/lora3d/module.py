"""`SelfCalibrationModule`: LoRA3D self-calibration as a Lightning module.

fit:      on_fit_start runs the frozen DUSt3R (adapters off) over the scene's pair graph,
          aligns the pointmaps robustly (align -> re-weight -> align) and keeps the
          high-confidence points as pseudo-labels; training_step fine-tunes the LoRA
          adapters on them with DUSt3R's confidence-aware loss; at the end of fit
          `AdapterModule` saves adapter.safetensors into the output folder.
predict:  aligns the adapted model's predictions and writes cloud.ply, poses.json and
          preview.png (depth, confidence before / after, a rendered view) into the
          output folder (`output_dir`, else the run's folder under default_root_dir).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from lorakit import load_adapter
from lorakit.config import LoRAConfig
from lorakit.errors import LoraKitError
from lorakit.lightning_module import AdapterModule

from .align import robust_alignment
from .calibrate import (
    PseudoLabels,
    SelfCalibration,
    calibration_loss,
    pairwise_inference,
    pseudo_labels,
)
from .model import EMBEDDED, LORA_TARGETS, load_checkpoint
from .outputs import preview, write_ply, write_poses


class SelfCalibrationModule(AdapterModule):
    """LoRA3D self-calibration of a DUSt3R checkpoint on one scene.

    Args:
        checkpoint: DUSt3R checkpoint ({"args", "model"}, upstream format); None is the
            embedded tiny model.
        rank: LoRA rank.
        alpha: LoRA alpha.
        targets: module patterns to adapt (default: the 48 transformer nn.Linear).
        align_iters: iterations of the first global alignment.
        round_iters: iterations of each re-weighting round.
        reweight_rounds: confidence re-weighting rounds (0: none, an ablation).
        mu_factor: robust residual scale, times the median residual.
        conf_threshold: keep pixels whose calibrated confidence exceeds it (None: use
            keep_fraction).
        keep_fraction: fraction of each image kept as pseudo-labels.
        all_points: every pixel is a pseudo-label (ablation).
        init: alignment initialisation, 'mst' (falls back to 'random' on a NaN focal).
        backend: aligner, 'auto', 'native' or 'upstream' (mini-dust3r's PointCloudOptimizer).
        loss_alpha: weight of -log(confidence) in the loss.
        adapter: an adapter file to load before predicting.
        output_dir: where fit writes adapter.safetensors and predict writes cloud.ply,
            poses.json, preview.png; None: the run's folder under
            --trainer.default_root_dir.
        lr: adapter learning rate.
    """

    def __init__(self, checkpoint: str | None = None, rank: int = 8, alpha: float = 16.0,
                 targets: list[str] | None = None, align_iters: int = 150,
                 round_iters: int = 50, reweight_rounds: int = 2, mu_factor: float = 1.0,
                 conf_threshold: float | None = None, keep_fraction: float = 0.5,
                 all_points: bool = False, init: str = "mst", backend: str = "auto",
                 loss_alpha: float = 0.2, adapter: str | None = None,
                 output_dir: str | None = None, lr: float = 2e-3) -> None:
        super().__init__(lr=lr, weight_decay=0.0, optimizer="adamw", output_dir=output_dir)
        self.save_hyperparameters()
        self.checkpoint = checkpoint
        self.model, self.model_args = load_checkpoint(checkpoint)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.cfg = SelfCalibration(
            align_iters=align_iters, round_iters=round_iters, align_lr=0.01,
            reweight_rounds=reweight_rounds, mu_factor=mu_factor,
            conf_threshold=conf_threshold, keep_fraction=keep_fraction, all_points=all_points,
            init=init, backend=backend, rank=rank, alpha=alpha,
            targets=list(targets or LORA_TARGETS), lr=lr, loss_alpha=loss_alpha)
        self.attach_adapters(self.model, LoRAConfig(rank=rank, alpha=alpha,
                                                    targets=list(targets or LORA_TARGETS)))
        if adapter is not None:
            self._load_adapter(adapter)
        self.labels: PseudoLabels | None = None
        self.stats: dict = {}

    def _load_adapter(self, path) -> None:
        # load into a fresh copy of the frozen base: the file's config decides the layers
        self.adapters.detach()
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

    def on_fit_start(self) -> None:
        super().on_fit_start()
        dm = self._scene()
        self._check_size(dm.images)
        t = time.perf_counter()
        with self.adapters.disabled():
            preds = pairwise_inference(self.model, dm.images, dm.edges)
        t_inf = time.perf_counter() - t
        t = time.perf_counter()
        targets = self.cfg.align(preds)
        self.labels = pseudo_labels(targets, dm.edges, self.cfg.all_points)
        self.stats = {"inference_s": t_inf, "alignment_s": time.perf_counter() - t,
                      "alignment_rounds": targets.rounds,
                      "alignment_notes": targets.alignment.notes,
                      "pseudo_label_fraction": float(self.labels.masks.float().mean())}
        for note in targets.alignment.notes:
            print(f"lora3d: {note}", flush=True)

    def training_step(self, batch, batch_idx):
        if self.labels is None:
            raise LoraKitError("pseudo-labels are missing: on_fit_start did not run")
        edges = [tuple(int(x) for x in e) for e in batch]
        loss, parts = calibration_loss(self.model, self._scene().images, self.labels, edges,
                                       self.cfg.loss_alpha)
        if not torch.isfinite(loss):
            raise LoraKitError(f"LoRA fine-tuning diverged at step {self.global_step}")
        self.log("train_loss", loss, prog_bar=True, batch_size=len(edges))
        self.log("train_regr", parts["regr"], batch_size=len(edges))
        return loss

    def adapter_metadata(self) -> dict:
        return {"plugin": "lora3d", "base_model": self.model_args,
                "checkpoint": self.checkpoint or EMBEDDED.name, "steps": int(self.global_step),
                "calibration": self.cfg.to_dict(), "stats": self.stats}

    # --- predict -----------------------------------------------------------------------
    def predict_step(self, batch, batch_idx=0):
        images, names = batch["images"], batch["names"]
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        edges = dm.edges if dm is not None and dm.edges else None
        if edges is None:
            from .calibrate import make_pairs
            edges = make_pairs(images.shape[0])
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
            before = pairwise_inference(self.model, images, edges)
        after = pairwise_inference(self.model, images, edges)
        targets = robust_alignment(after, rounds=0, niter=self.cfg.align_iters,
                                   init=self.cfg.init, backend=self.cfg.backend)
        a = targets.alignment
        from .align import image_confidence
        n = images.shape[0]
        conf_b = image_confidence(edges, before.conf_i, before.conf_j, n, "max")
        conf_a = image_confidence(edges, after.conf_i, after.conf_j, n, "max")
        ply = write_ply(out / "cloud.ply", a.pts3d, images)
        poses = write_poses(out / "poses.json", a.poses, a.focals, list(names),
                            tuple(images.shape[1:3]),
                            {"alignment_loss": a.loss, "init": a.init, "notes": a.notes})
        png = preview(out / "preview.png", images, a.depths, conf_b, conf_a, a.pts3d, a.poses,
                      float(a.focals.mean()) * 1.5, "lora3d: aligned with the adapted model")
        return {"ply": str(ply), "poses": str(poses), "preview": str(png),
                "alignment_loss": a.loss}
