r"""`IterativePruning`: prune while fine-tuning, a little every k steps (LoRAPrune's schedule).

    step:    start        start+k      start+2k   …   end
    ratio:   0  ─────────► r(1) ──────► r(2) ─── … ──► target
             scores accumulate after every backward (moving average, importance.py);
             at each event the lowest-scoring units go, until the target ratio

LoRAPrune (Zhang et al. 2024, sec. 3.3, "iterative pruning") fine-tunes LoRA and, every
few steps, removes a fraction of the heads and channels by the LoRA-guided criterion,
so the adapter learns to make up for what went; the fraction follows a cubic schedule
r(p) = R (1 − (1 − p)³) of the progress p from `start` to `end` (the authors'
`schedule_sparsity_ratio`, Zhu & Gupta 2017's gradual pruning), which prunes fastest
while the model is still far from the target. `schedule="linear"` is the plain ramp.
The same callback runs every criterion ("loraprune", "taylor", "magnitude") with the
same schedule and the same smoothing, so their figures compare.

Pruning here is real: the weights are sliced at each event (`prune.prune_units`), the
authors' code masks during training and cuts at the end. The optimizer stays valid
without a rebuild: the adapters' parameters are the same `nn.Parameter` objects with
fewer rows / columns, and their optimizer state (Adam's moments) is sliced with them.
"taylor" turns on gradients for the prunable base weights at the start of training
(after the optimizer was built, so they are never stepped) and drops them after each
read; it costs a full-size gradient per weight, which is LLM-Pruner's memory cost.
"""
from __future__ import annotations

import math

import lightning.pytorch as pl
from torch import nn

from ..errors import LoraKitError
from .importance import CRITERIA, Criterion, ScoreAccumulator
from .prune import PruneReport, PruneSpec, head_units, keep_count, prune_units
from .structure import blocks, channel_count


def schedule_ratio(step: int, start: int, end: int, target: float, schedule: str = "cubic") -> float:
    """The fraction pruned by `step`: 0 before `start`, `target` from `end` on."""
    if step <= start:
        return 0.0
    p = min(1.0, (step - start) / max(end - start, 1))
    return target * (1.0 - (1.0 - p) ** 3) if schedule == "cubic" else target * p


class IterativePruning(pl.Callback):
    """Prune the LightningModule's model every `every` optimizer steps up to `spec`'s ratio.

    Args:
        spec: the target (ratio of heads and channels removed, GQA grain).
        criterion: "loraprune" (LoRA weights and gradients only), "taylor" (LLM-Pruner's,
            base-weight gradients) or "magnitude".
        every: optimizer steps between pruning events.
        start: the step after which pruning begins (the scores warm up before it).
        end: the step at which the target is reached (default: the run's last step).
        schedule: "cubic" (LoRAPrune's) or "linear".
        beta: the moving average's λ (LoRAPrune sec. 3.2).
        normalize: per-module normalisation of unit scores (importance.py).
        model_attr: the attribute of the LightningModule holding the transformers model
            (None: the LightningModule itself).
        adapter: the adapter "loraprune" reads (default: the active one).

    After fit, `report` maps the final model to the one training started with (a
    `PruneReport`, composed over events) and `history` has one summary per event.
    """

    def __init__(self, spec: PruneSpec, criterion: Criterion = "loraprune", every: int = 10,
                 start: int = 0, end: int | None = None, schedule: str = "cubic",
                 beta: float = 0.9, normalize: bool = True, model_attr: str | None = "model",
                 adapter: str | None = None) -> None:
        if criterion not in CRITERIA:
            raise LoraKitError(f"IterativePruning: criterion must be one of {list(CRITERIA)}, "
                               f"got {criterion!r}")
        if every < 1 or start < 0 or (end is not None and end <= start):
            raise LoraKitError(f"IterativePruning: need every >= 1 and 0 <= start < end, got "
                               f"every={every}, start={start}, end={end}")
        if schedule not in ("cubic", "linear"):
            raise LoraKitError(f"IterativePruning: schedule must be 'cubic' or 'linear', got "
                               f"{schedule!r}")
        self.spec, self.criterion, self.every, self.start = spec, criterion, every, start
        self.end, self.schedule, self.beta, self.normalize = end, schedule, beta, normalize
        self.model_attr, self.adapter = model_attr, adapter
        self.report: PruneReport | None = None
        self.history: list[dict] = []
        self.events: list[int] = []
        self.acc: ScoreAccumulator | None = None

    def _model(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.model_attr is None:
            return pl_module
        model = getattr(pl_module, self.model_attr, None)
        if not isinstance(model, nn.Module):
            raise LoraKitError(f"IterativePruning: {type(pl_module).__name__} has no module "
                               f"{self.model_attr!r}; set model_attr to the attribute holding "
                               "the transformers model")
        return model

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = self._model(pl_module)
        if self.end is None and not math.isfinite(trainer.estimated_stepping_batches):
            raise LoraKitError("IterativePruning: the run has no known length (max_steps); "
                               "give end=, the step at which the target is reached")
        end = self.end if self.end is not None else int(trainer.estimated_stepping_batches)
        if end <= self.start:
            raise LoraKitError(f"IterativePruning: the run has {end} optimizer steps, not more "
                               f"than start={self.start}; lower start or train longer")
        self.end = end
        n = math.ceil((end - self.start) / self.every)
        self.events = sorted({min(self.start + i * self.every, end) for i in range(1, n + 1)})
        self.units0 = head_units(model, self.spec.gqa)
        self.channels0 = channel_count(model, blocks(model)[0])
        self.acc = ScoreAccumulator(model, self.criterion, self.beta, self.normalize,
                                    self.adapter)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.acc is not None and self.criterion != "magnitude":
            self.acc.update()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        while self.events and self.events[0] <= trainer.global_step:
            self.prune_now(trainer, pl_module, self.events.pop(0))

    def prune_now(self, trainer, pl_module, step: int) -> PruneReport | None:
        """One pruning event at `step`: down to the schedule's counts, by the scores so far."""
        model = self._model(pl_module)
        ratio_h = schedule_ratio(step, self.start, self.end, self.spec.heads_ratio, self.schedule)
        ratio_c = schedule_ratio(step, self.start, self.end, self.spec.channels_ratio,
                                 self.schedule)
        units, channels = head_units(model, self.spec.gqa), channel_count(model, blocks(model)[0])
        keep_h = keep_count(self.units0, ratio_h) if self.spec.heads else units
        keep_c = keep_count(self.channels0, ratio_c) if self.spec.channels else channels
        if keep_h >= units and keep_c >= channels:
            return None
        report = prune_units(model, self.acc.scores(),
                             keep_head_units=keep_h if keep_h < units else None,
                             keep_channels=keep_c if keep_c < channels else None,
                             gqa=self.spec.gqa, optimizers=trainer.optimizers)
        self.acc.pruned(report)
        self.report = report if self.report is None else self.report.then(report)
        self.history.append({"step": step, "heads_ratio": ratio_h, "channels_ratio": ratio_c,
                             **report.summary()})
        return report

    def on_train_end(self, trainer, pl_module) -> None:
        if self.acc is not None:
            self.acc.close()
