"""The variants suite's protocol on validation numbers: which learning rate a method keeps,
how many steps a run takes to reach a target loss, and mean ± SD over seeds.

Nothing here sees a test split: the learning rate is chosen on validation accuracy (ties
to the lower validation loss), and the steps-to-reach target is LoRA's final validation
loss.
"""
from __future__ import annotations

import math
import statistics


def choose_lr(sweep: dict[float, dict]) -> float:
    """The learning rate whose run has the best validation accuracy; among equal
    accuracies the lower validation loss, then the smaller learning rate.

    `sweep` maps each learning rate to its run's final `{"val_acc", "val_loss"}`; a run
    whose loss is not finite (diverged) is never chosen while another is."""
    if not sweep:
        raise ValueError("choose_lr: the sweep is empty")

    def key(lr: float):
        run = sweep[lr]
        finite = math.isfinite(run["val_loss"])
        return (not finite, -run["val_acc"], run["val_loss"] if finite else 0.0, lr)
    return min(sweep, key=key)


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first step of `curve` ([(step, validation loss)], in step order) whose loss is
    at or below `target`; None when the run never gets there."""
    for step, loss in curve:
        if loss <= target:
            return step
    return None


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaN, NaN when empty."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), sd
