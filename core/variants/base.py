"""The variant protocol: what every adapter method is, in one class.

A `Variant` is one named adapter on one adapted module: it holds that adapter's
tensors for the module. What a new method must implement (LoRA, `lora.py`, is the
whole of it in 20 lines):

    method        its name in the registry and in files (`VARIANTS`, `LoRAConfig.method`),
                  and `summary`, its line in `LoRAConfig.method`'s help
    __init__      its tensors: trained ones as `nn.Parameter`s, fixed ones it needs (FFA-LoRA's
                  A, LoRA-SB's A and B) as persistent buffers, in the file and in checkpoints,
                  never in the optimizer; their optimizer group in `param_kinds`
    factors()     (A, B) unscaled, ΔW = scale · B A: from it come `forward`, `delta_weight`,
                  `merge_into` / `unmerge_from`, `rank` and the routed batch
    file_keys, file_factors   the same from file tensors alone (`file.VariantFile`)

A method that is not a plain product B A (DoRA, a mixture) overrides `forward`,
`delta_weight`, `merge_into` / `unmerge_from` and `file_delta` instead of `factors`, and
sets `routable = False` (a routed batch gathers B A only); `mergeable = False` where ΔW
depends on each input (a mixture). Each of those receives the base module or weight.
`kind_refusal` names the layer kinds a method cannot adapt; `plan` refuses a config, or
gives modules their own configs, before any module is touched; `init_from_weight` is
called once by `attach` with the base weight (DoRA's magnitude starts at its row norms).

Everything else is optional (`optional.py`: SharedTensors, GradientInit, LossTerms,
TrainingHooks, Router, Prunable), no-op defaults that a method overrides. The layer,
the handle, the adapter file, PEFT interop, merge and inspect call these and never ask
which method they hold.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from ..config import LoRAConfig
from ..layers.kinds import LayerKind
from .file import VariantFile
from .optional import GradientInit, LossTerms, Prunable, Router, SharedTensors, TrainingHooks


def adapter_dtype(weight: torch.Tensor | torch.dtype) -> torch.dtype:
    """Adapters of half-precision bases train in float32, as PEFT's autocast does (`weight`:
    the base weight, or its dtype)."""
    dtype = weight if isinstance(weight, torch.dtype) else weight.dtype
    if dtype in (torch.float16, torch.bfloat16) or not dtype.is_floating_point:
        return torch.float32
    return dtype


def init_down_projection(a: torch.Tensor, init: str) -> None:
    if init == "kaiming":
        # the same as nn.Linear's own weight init, and PEFT's default
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    else:
        nn.init.normal_(a, std=1.0 / a.shape[0])


class Variant(nn.Module, VariantFile, SharedTensors, GradientInit, LossTerms, TrainingHooks,
              Router, Prunable):
    """One named adapter on one module; subclasses are the methods (LoRA, S2-LoRA, ...)."""

    method: ClassVar[str]
    summary: ClassVar[str] = ""                  # one line for `LoRAConfig.method`'s help
    param_kinds: ClassVar[dict[str, str]] = {}   # tensor name -> optimizer group ("lora")
    routable: ClassVar[bool] = True              # has `factors()`: mixed-adapter batches work
    mergeable: ClassVar[bool] = True             # ΔW folds into the base weight (merge_into)
    #: the adapted model starts at the base's output; False where the method's own start is
    #: elsewhere by design (L4Q starts at the quantized base Q(W))
    starts_at_base: ClassVar[bool] = True
    #: why it has no rank-1 units to merge with others (routable False), and what to do
    merge_refusal: ClassVar[str] = ("its update depends on the base weight, so it has no "
                                    "rank-1 units to merge. Fold it into the base with "
                                    "`lorakit adapter merge`, or merge adapters trained "
                                    "with a plain-LoRA method")

    def __init__(self, kind: LayerKind, config: LoRAConfig, dtype: torch.dtype,
                 device: torch.device, shared: nn.Module | None = None) -> None:
        super().__init__()
        self.scale = self.scale_for(config)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    @classmethod
    def scale_for(cls, config: LoRAConfig) -> float:
        """The factor on B A: alpha / r (or alpha / sqrt(r)) unless the method fixes it."""
        return float(config.scale)

    # --- before any module changes ------------------------------------------------------
    @classmethod
    def kind_refusal(cls, kind: type[LayerKind]) -> str | None:
        """Why this method cannot adapt layers of `kind` (its `__init__` raises it, naming the
        module), or None where it can; default: every kind."""
        return None

    @classmethod
    def plan(cls, config: LoRAConfig, paths: list[str]) -> dict[str, LoRAConfig]:
        """Per-module configs where modules differ (a mixture's expert count per layer), by
        path; `attach` uses `config` for the others. Raise here to refuse a config before
        any module is touched. Default: every module gets `config`."""
        return {}

    def init_from_weight(self, weight: torch.Tensor) -> None:
        """Called by `attach` with the base weight as an (out × in) matrix; default: nothing."""

    # --- its tensors, under which file key ----------------------------------------------
    def own_tensors(self) -> dict[str, torch.Tensor]:
        """This module's own tensors by name, trained (parameters) and fixed (buffers); the
        file key is `<module path>.<name>`."""
        return {**dict(self.named_parameters(recurse=False)),
                **dict(self.named_buffers(recurse=False))}

    # --- maths of the live layer ----------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.factors()[0].shape[0]

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B), unscaled, with ΔW = scale · B A."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, kind: LayerKind, base: nn.Module) -> torch.Tensor:
        """What this adapter adds to `base(x)`: scale · B A x, in the kind's own sense of
        applying A and B."""
        a, b = self.factors()
        if kind.float_input:
            x = self.dropout(x.to(a.dtype))
        # the scale rides on the r-wide middle: the cheapest place for it
        return kind.up(kind.down(x, a) * self.scale, b)

    def delta_weight(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """scale · B A (out × in); `weight` (the base weight as a matrix) for methods whose
        update depends on it."""
        a, b = self.factors()
        return (b @ a) * self.scale

    @torch.no_grad()
    def merge_into(self, weight: torch.Tensor, kind: LayerKind, factor: float) -> None:
        """weight += factor · ΔW, in the weight's own layout (in place)."""
        delta = self.delta_weight(kind.to_matrix(weight)) * factor
        weight.add_(kind.to_weight(delta, weight.shape).to(weight.dtype))

    @torch.no_grad()
    def unmerge_from(self, weight: torch.Tensor, kind: LayerKind, factor: float) -> None:
        delta = self.delta_weight(kind.to_matrix(weight)) * factor
        weight.sub_(kind.to_weight(delta, weight.shape).to(weight.dtype))

    def extra_repr(self) -> str:
        return f"method={self.method}, rank={self.rank}, scale={self.scale:g}"
