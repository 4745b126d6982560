"""`AdapterEMA`: an exponential moving average of the trained weights, used once training ends.

With a constant learning rate the last step's weights are one noisy point of a walk
around the optimum; the average of the recent steps sits closer to it (Polyak & Juditsky
1992; the EMA of Tan & Le 2019 and most diffusion training). Only the trainable tensors
are averaged (adapters, λ, modules_to_save), never the frozen base, so the copy costs
what the adapters cost.

The average is bias-corrected (as Adam's moments are): after t steps it is

    Σ_i d^(t-i) (1-d) w_i / (1 - d^t)

so its weights sum to one from the first step, and no warm-up of its own is needed.
During validation the averaged weights are swapped in (so the metrics, and any
checkpoint chosen by them, judge what training will hand over) and the raw ones put
back before the next step; when training ends the average replaces the raw weights for
good, before the module's own `on_fit_end` (which saves adapter files) runs.

    lorakit <plugin> fit --trainer.callbacks+=lorakit.AdapterEMA --trainer.callbacks.decay 0.998
"""
from __future__ import annotations

import lightning.pytorch as pl
import torch

from ..errors import LoraKitError


class AdapterEMA(pl.Callback):
    """Exponential moving average of the trainable weights, handed over at the end of fit.

    Args:
        decay: weight of the previous average at each optimizer step, in [0, 1); the
            average spans about 1/(1-decay) steps (0.998: the last ~500).
    """

    def __init__(self, decay: float = 0.998) -> None:
        if not 0.0 <= decay < 1.0:
            raise LoraKitError(f"AdapterEMA.decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.steps = 0
        self._params: list[torch.nn.Parameter] = []
        self._sum: list[torch.Tensor] = []
        self._raw: list[torch.Tensor] | None = None
        self._last_step = -1

    def on_fit_start(self, trainer, pl_module) -> None:
        self._params = [p for p in pl_module.parameters() if p.requires_grad]
        if not self._params:
            raise LoraKitError("AdapterEMA: the module has no trainable parameters to average")
        if len(self._sum) != len(self._params):  # fresh, not restored from a checkpoint
            self._sum = [torch.zeros_like(p, dtype=torch.float32) for p in self._params]
            self.steps = 0
        else:
            self._sum = [s.to(p.device) for s, p in zip(self._sum, self._params)]
        self._last_step = trainer.global_step

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:  # accumulating gradients: no step yet
            return
        self._last_step = trainer.global_step
        self.steps += 1
        for s, p in zip(self._sum, self._params):
            s.mul_(self.decay).add_(p.detach().float(), alpha=1.0 - self.decay)

    @torch.no_grad()
    def averaged(self) -> list[torch.Tensor]:
        """The bias-corrected average of every trainable tensor (the raw weights before
        the first step)."""
        if self.steps == 0:
            return [p.detach().clone() for p in self._params]
        scale = 1.0 / (1.0 - self.decay ** self.steps)
        return [(s * scale).to(p.dtype) for s, p in zip(self._sum, self._params)]

    @torch.no_grad()
    def _copy_in(self, tensors: list[torch.Tensor]) -> None:
        for p, t in zip(self._params, tensors):
            p.copy_(t)

    def _swap_in(self) -> None:
        self._raw = [p.detach().clone() for p in self._params]
        self._copy_in(self.averaged())

    def _swap_out(self) -> None:
        if self._raw is not None:
            self._copy_in(self._raw)
            self._raw = None

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and self.steps:
            self._swap_in()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._swap_out()

    def on_train_end(self, trainer, pl_module) -> None:
        self._swap_out()
        self._copy_in(self.averaged())

    # --- resume: the average travels in the Lightning checkpoint -----------------------
    def state_dict(self) -> dict:
        return {"decay": self.decay, "steps": self.steps,
                "sum": [s.detach().cpu() for s in self._sum]}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("decay", self.decay) != self.decay:
            raise LoraKitError(f"AdapterEMA: the checkpoint averaged with decay "
                               f"{state_dict['decay']}, this run asks for {self.decay}")
        self.steps = int(state_dict["steps"])
        self._sum = list(state_dict["sum"])
