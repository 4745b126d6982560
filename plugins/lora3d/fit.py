"""`fit_scene`: `lorakit lora3d fit` on a scene held in memory, as one call.

    images (n,H,W,3) --SceneDataModule.of--> data
    default.yaml's model section + kwargs --> SelfCalibrationModule
    default.yaml's trainer section (+ max_steps) --> pl.Trainer(...).fit(module, data)

The same settings file, the same module and the same Trainer arguments as the command
line, so what the demo and the benchmark measure is what `lorakit lora3d fit` does.
"""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml

from lorakit.reports.progress import StepProgressBar

from .data import SceneDataModule, SceneTruth
from .module import SelfCalibrationModule

CONFIG = Path(__file__).with_name("default.yaml")


def default_config() -> dict:
    """default.yaml as a dict: seed_everything, trainer, model, data."""
    return yaml.safe_load(CONFIG.read_text())


def fit_scene(images: torch.Tensor, *, out_dir, checkpoint: str | Path | None = None,
              max_steps: int | None = None, threads: int | None = 1, progress: bool = False,
              gt_pts3d: torch.Tensor | None = None, gt_valid: torch.Tensor | None = None,
              gt_poses: torch.Tensor | None = None, data: dict | None = None,
              trainer: dict | None = None, **module_kwargs) -> SelfCalibrationModule:
    """Self-calibrate on one scene; returns the fitted module (adapters on its model).

    images: (n,H,W,3) in [0,1]. out_dir: where adapter.safetensors is written.
    module_kwargs override default.yaml's model section (any SelfCalibrationModule
    argument: reweight_rounds, all_points, conf_loss, labels, ...); `data` overrides
    SceneDataModule arguments (graph, window, batch_pairs) and `trainer` pl.Trainer ones
    (accelerator, devices, precision, ...) on top of default.yaml's. gt_pts3d (n,H,W,3 world),
    gt_valid (n,H,W) and optionally gt_poses (n,4,4 camera-to-world) are read by
    labels='oracle' only. After the call, `module.stats` holds inference_s, alignment_s
    and training_s, `module.before` the frozen model's pair predictions, `module.calibration`
    the robust alignment and `module.labels` what was trained on.
    """
    config = default_config()
    if threads:
        torch.set_num_threads(threads)
    pl.seed_everything(config.get("seed_everything"), verbose=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module = SelfCalibrationModule(**{
        **config.get("model", {}), **module_kwargs, "output_dir": str(out_dir),
        "checkpoint": None if checkpoint is None else str(checkpoint)})
    truth = None if gt_pts3d is None else SceneTruth(gt_pts3d, gt_valid, gt_poses)
    datamodule = SceneDataModule.of(images, truth, **(data or {}))
    trainer_args = {**config["trainer"], "default_root_dir": str(out_dir),
                    "enable_progress_bar": progress, **(trainer or {})}
    if max_steps is not None:
        trainer_args["max_steps"] = max_steps
    pl.Trainer(**trainer_args, callbacks=[StepProgressBar()] if progress else None).fit(
        module, datamodule)
    return module
