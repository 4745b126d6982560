"""LightningCLI as `lorakit <plugin> fit|validate|test|predict` runs it.

The one difference from Lightning's: the default progress bar is lorakit's
StepProgressBar (steps out of max_steps when the step budget ends the run). A
progress bar the user names in --trainer.callbacks, or --trainer.enable_progress_bar
false, wins as it would in plain Lightning.
"""
from __future__ import annotations

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI

from .reports.progress import StepProgressBar


class LorakitCLI(LightningCLI):
    def instantiate_trainer(self, **kwargs) -> Trainer:
        config = self.config_init.get(str(self.subcommand), self.config_init).get("trainer", {})
        callbacks = kwargs.get("callbacks", config.get("callbacks")) or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        wants_bar = kwargs.get("enable_progress_bar", config.get("enable_progress_bar")) is not False
        if wants_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, StepProgressBar()]
        return super().instantiate_trainer(**kwargs)
