"""StepProgressBar: the training bar counts steps out of max_steps when they end the run."""
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lorakit.reports.progress import StepProgressBar


class Line(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class BarSpy(pl.Callback):
    """What the training bar shows before each batch and at the end (after the bar's own hooks)."""

    def __init__(self):
        self.seen = []

    def record(self, trainer):
        task = trainer.progress_bar_callback.train_progress_bar
        self.seen.append((task.description, task.total, task.completed))

    def on_train_batch_start(self, trainer, *_):
        self.record(trainer)

    def on_train_end(self, trainer, *_):
        self.record(trainer)


def fit(tmp_path, **limits):
    """Three batches an epoch; returns what the bar showed."""
    data = DataLoader(TensorDataset(torch.randn(6, 2), torch.randn(6, 1)), batch_size=2)
    spy = BarSpy()
    trainer = pl.Trainer(callbacks=[spy, StepProgressBar()], accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         default_root_dir=tmp_path, **limits)
    trainer.fit(Line(), data)
    return spy.seen


def test_max_steps_bar_counts_steps_across_epochs_out_of_the_budget(tmp_path):
    seen = fit(tmp_path, max_steps=7)  # max_epochs defaults to -1: Lightning shows "Epoch 2/-2"
    assert seen == [(f"step {s}/7", 7, s) for s in range(7)] + [("step 7/7", 7, 7)]


def test_max_steps_bounds_the_run_before_max_epochs_does(tmp_path):
    seen = fit(tmp_path, max_steps=4, max_epochs=5)
    assert seen[-1] == ("step 4/4", 4, 4)


def test_max_epochs_bounding_the_run_keeps_lightnings_epoch_bar(tmp_path):
    seen = fit(tmp_path, max_steps=100, max_epochs=2)
    assert [d.strip() for d, _, _ in seen] == ["Epoch 0/1"] * 3 + ["Epoch 1/1"] * 3 + ["Epoch 1/1"]
    assert {total for _, total, _ in seen} == {3}
