"""A training progress bar that counts steps when `max_steps` is what ends the run.

Lightning's bar counts batches of the current epoch and labels it "Epoch e/max_epochs-1";
with `max_steps` and the default `max_epochs=-1` that reads "Epoch 43/-2", and the bar
restarts every epoch, so nobody can see how far the run is. When the step budget is
the bound that stops training (`trainer.estimated_stepping_batches == max_steps`),
this bar shows optimizer steps done out of `max_steps` across epochs instead
("step 120/500"); otherwise it is Lightning's RichProgressBar unchanged.
"""
from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """RichProgressBar whose training bar is "step s/max_steps" when max_steps bounds the run."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._budget: int | None = None

    def step_budget(self, trainer: pl.Trainer) -> int | None:
        """max_steps if it ends training before max_epochs does, else None."""
        if trainer.max_steps is None or trainer.max_steps < 0:
            return None
        return trainer.max_steps if trainer.estimated_stepping_batches == trainer.max_steps else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._budget = self.step_budget(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._show_steps(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._show_steps(trainer)

    def _show_steps(self, trainer: pl.Trainer) -> None:
        """Point the training bar at the step count (Lightning just set it per epoch)."""
        budget = self._budget
        if budget is None or self.progress is None or self.train_progress_bar_id is None:
            return
        description = f"step {trainer.global_step}/{budget}"
        if self.theme.description:
            description = f"[{self.theme.description}]{description}"
        self.progress.update(self.train_progress_bar_id, total=budget,
                             completed=trainer.global_step, description=description)
        self.refresh()
