"""The variant protocol: what every adapter method is, in one class.

A `Variant` is one named adapter on one adapted module: it holds that adapter's
trainable tensors for the module and says

- its tensors and their keys in the adapter file (`own_tensors`, `shared_tensors`,
  `file_keys`) and the optimizer group of each (`param_kinds`). Trained tensors are
  `nn.Parameter`s; tensors a method keeps fixed but needs (FFA-LoRA's A, LoRA-SB's A
  and B) are persistent buffers: in the file and in checkpoints, never in the optimizer;
- its init (in `__init__`, and `make_shared` for tensors several modules share), and
  two optional init hooks: `init_from_weight(weight)`, called once by `attach` with the
  base weight (DoRA's magnitude starts at its row norms), and
  `init_from_gradient(grad, weight)`, called by `lorakit.init_from_gradients` with the
  base weight's full gradient averaged over a few batches (LoRA-GA, LoRA-SB);
- its contribution to the layer's output (`forward`) and ΔW for the live layer
  (`delta_weight`), both already scaled, and how ΔW goes into and out of the base
  weight (`merge_into`, `unmerge_from`);
- ΔW from file tensors alone (`file_factors`, `file_delta`), for `adapter merge`,
  `adapter inspect` and PEFT export;
- its PEFT mapping (`peft`: whether PEFT's LoRA layout holds it exactly, as A and B
  from `file_factors`, plus `peft_extra` tensors such as DoRA's magnitude and
  `peft_config` keys such as `use_dora`; `from_peft_extra` reads those back, and an
  imported PEFT config whose keys match a method's `peft_config` becomes that method).
- its training hooks, no-ops unless the method needs them: `before_optimizer_step`
  (change the gradients: ALLoRA), `perturb` / `restore` (a perturbed second pass:
  LoRA-GGPO) and `output_terms` (loss terms on the model's outputs: BA-LoRA), which the
  handle calls on every variant and `AdapterModule` calls through the handle;
- what a router needs (a mixture of experts): `plan` (per-module configs, such as an
  expert count per layer, and refusals before any module changes), `aux_losses` (loss
  terms of the last forward: load balance), `routing_stats` (per-expert load, router
  entropy), `set_row_types` (each row's data type: LoRAMoE), and for files `file_rank`,
  `file_info` (inspect's per-module facts), `options` (the config fields it reads) and
  `peft_refusal` (why `export-peft` cannot hold it).

The layer, the handle, the adapter file, PEFT interop, merge and inspect call these
and never ask which method they hold. A method that is not a plain product B A
(DoRA, a mixture) overrides `forward`, `delta_weight`, `merge_into` / `unmerge_from`
and `file_delta`, and sets `routable = False` (a routed batch gathers B A only).
Each of those receives the base module or weight, which such a method needs.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from ..config import LoRAConfig
from ..errors import LoraKitError
from ..layers.kinds import LayerKind


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """Adapters of half-precision bases train in float32, as PEFT's autocast does."""
    if weight.dtype in (torch.float16, torch.bfloat16) or not weight.is_floating_point():
        return torch.float32
    return weight.dtype


def init_down_projection(a: torch.Tensor, init: str) -> None:
    if init == "kaiming":
        # the same as nn.Linear's own weight init, and PEFT's default
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    else:
        nn.init.normal_(a, std=1.0 / a.shape[0])


class Variant(nn.Module):
    """One named adapter on one module; subclasses are the methods (LoRA, S2-LoRA, ...)."""

    method: ClassVar[str]
    param_kinds: ClassVar[dict[str, str]] = {}   # tensor name -> optimizer group ("lora")
    peft: ClassVar[bool] = True                  # PEFT's LoRA layout holds it exactly
    peft_config: ClassVar[dict] = {}             # adapter_config.json keys it sets ({"use_dora": True})
    routable: ClassVar[bool] = True              # has `factors()`: mixed-adapter batches work
    perturbs: ClassVar[bool] = False             # `perturb` does something: a second pass
    output_regularised: ClassVar[bool] = False   # `output_terms` gives loss terms
    peft_refusal: ClassVar[str] = ""             # why `export-peft` refuses it (peft False)
    #: why it has no rank-1 units to merge with others (routable False), and what to do
    merge_refusal: ClassVar[str] = ("its update depends on the base weight, so it has no "
                                    "rank-1 units to merge. Fold it into the base with "
                                    "`lorakit adapter merge`, or merge adapters trained "
                                    "with a plain-LoRA method")
    options: ClassVar[tuple[str, ...]] = ()      # LoRAConfig fields it reads (for inspect)

    def __init__(self, kind: LayerKind, config: LoRAConfig, dtype: torch.dtype,
                 device: torch.device, shared: nn.Module | None = None) -> None:
        super().__init__()
        self.scale = self.scale_for(config)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    @classmethod
    def scale_for(cls, config: LoRAConfig) -> float:
        """The factor on B A: alpha / r (or alpha / sqrt(r)) unless the method fixes it."""
        return float(config.scale)

    # --- tensors that several modules share (S2-LoRA's basis) -------------------------
    @classmethod
    def shared_key(cls, kind: LayerKind, path: str, config: LoRAConfig) -> str | None:
        """Which group of modules module `path` shares tensors with (modules with the same
        key get one `make_shared` object, made for the first of them), or None."""
        return None

    @classmethod
    def make_shared(cls, kind: LayerKind, config: LoRAConfig, dtype: torch.dtype,
                    device: torch.device, key: str) -> nn.Module | None:
        return None

    @classmethod
    def plan(cls, config: LoRAConfig, paths: list[str]) -> dict[str, LoRAConfig]:
        """Per-module configs where modules differ (a mixture's expert count per layer), by
        path; `attach` uses `config` for the others. Raise here to refuse a config before
        any module is touched. Default: every module gets `config`."""
        return {}

    # --- init from the base --------------------------------------------------------------
    def init_from_weight(self, weight: torch.Tensor) -> None:
        """Called by `attach` with the base weight as an (out × in) matrix; default: nothing."""

    def init_from_gradient(self, grad: torch.Tensor, weight: torch.Tensor) -> None:
        """Set the tensors from the base weight's full gradient (out × in, averaged over a few
        batches) and the weight itself; `lorakit.init_from_gradients` calls it."""
        raise LoraKitError(f"method {self.method!r} has no gradient-driven init; it is for "
                           "methods such as lora_ga and lora_sb")

    # --- what is trainable, under which file key ---------------------------------------
    def own_tensors(self) -> dict[str, torch.Tensor]:
        """This module's own tensors by name, trained (parameters) and fixed (buffers); the
        file key is `<module path>.<name>`."""
        return {**dict(self.named_parameters(recurse=False)),
                **dict(self.named_buffers(recurse=False))}

    def shared_tensors(self) -> dict[str, nn.Parameter]:
        """Tensors shared with other modules, by their full file key."""
        return {}

    @classmethod
    def file_keys(cls, path: str, kind: type[LayerKind], weight_shape) -> list[str]:
        """The keys a file holds for this module (its own and the shared ones it uses)."""
        raise NotImplementedError

    @classmethod
    def keys_for(cls, config: LoRAConfig, path: str, kind: type[LayerKind],
                 weight_shape) -> list[str]:
        """`file_keys` for a file written with `config`, for methods whose keys depend on
        it (a mixture's experts: their method's keys); default `file_keys`."""
        return cls.file_keys(path, kind, weight_shape)

    # --- maths of the live layer -------------------------------------------------------
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

    def penalty(self) -> torch.Tensor | None:
        """A term the method adds to the loss (S2-LoRA's Σ|λ|), or None."""
        return None

    def shrink(self, threshold) -> None:
        """The proximal step of `penalty`, after an optimizer step (S2-LoRA: λ moves
        `threshold(λ)` towards zero and stops there); a no-op for methods without one."""

    def active_rank(self, tol: float) -> int:
        return self.rank

    # --- training hooks (the handle calls them on every variant; no-ops by default) ----
    def before_optimizer_step(self) -> None:
        """Change this module's gradients before the optimizer reads them (ALLoRA)."""

    def perturb(self, weight: torch.Tensor, kind: LayerKind) -> bool:
        """Perturb this module for a second forward/backward, from the gradients of the
        first (LoRA-GGPO); `weight` is the base weight. Returns whether it did."""
        return False

    def restore(self) -> None:
        """Undo `perturb`."""

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Weighted loss terms of this module's last forward, by name (a mixture's load
        balance); the handle averages them over modules (`Adapters.routing_terms`)."""
        return {}

    def routing_stats(self) -> dict:
        """What a router did (a mixture: per-expert load and entropy); empty without one."""
        return {}

    def set_row_types(self, row_types: torch.Tensor | None) -> None:
        """Each batch row's data type, for methods whose losses depend on it (LoRAMoE)."""

    @classmethod
    def output_terms(cls, config: LoRAConfig, outputs: torch.Tensor,
                     base_outputs: torch.Tensor,
                     sequences: int | None = None) -> dict[str, torch.Tensor]:
        """Weighted loss terms on the model's outputs, by name (BA-LoRA); one set per
        adapter, not per module. `base_outputs`: the same inputs through the frozen base;
        `sequences`: how many sequences the rows of token outputs came from (None: each
        row is its own example)."""
        return {}

    # --- ΔW from file tensors alone ----------------------------------------------------
    @classmethod
    def file_factors(cls, tensors: dict[str, torch.Tensor], path: str,
                     kind: type[LayerKind], weight_shape) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B), unscaled, of module `path` read from an adapter file's tensors."""
        raise NotImplementedError

    @classmethod
    def file_delta(cls, tensors, path, kind: type[LayerKind], weight_shape, scale: float,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
        """scale · B A in the base weight's layout, from file tensors (and, for methods whose
        update depends on it, the base `weight`)."""
        a, b = cls.file_factors(tensors, path, kind, weight_shape)
        return kind.to_weight(scale * (b.float() @ a.float()), weight_shape)

    @classmethod
    def peft_extra(cls, tensors, path, kind: type[LayerKind],
                   weight_shape) -> dict[str, torch.Tensor]:
        """PEFT tensors of module `path` beyond A and B, by key suffix in PEFT's layout
        (DoRA: {"lora_magnitude_vector": m}); default none."""
        return {}

    @classmethod
    def from_peft_extra(cls, extra: dict[str, torch.Tensor], path, kind: type[LayerKind],
                        weight_shape) -> dict[str, torch.Tensor]:
        """The inverse of `peft_extra`: file tensors of module `path` (full keys) from the
        PEFT tensors under it other than A and B ({suffix: tensor}); default none."""
        return {}

    @classmethod
    def file_rank(cls, tensors, path, kind, weight_shape) -> int:
        """The nominal rank of module `path` in a file."""
        return int(cls.file_factors(tensors, path, kind, weight_shape)[0].shape[0])

    @classmethod
    def file_info(cls, tensors, path, kind, weight_shape) -> dict:
        """Method-specific facts about module `path` for `adapter inspect` (a mixture's
        experts and their load); default none."""
        return {}

    @classmethod
    def file_active_rank(cls, tensors, path, kind, weight_shape, tol: float) -> int:
        """Ranks in use: the rank the update really has, not the nominal r."""
        a, b = cls.file_factors(tensors, path, kind, weight_shape)
        delta = b.float() @ a.float()
        return int(torch.linalg.matrix_rank(delta)) if delta.abs().max() > 0 else 0

    # --- group operations over every module of one adapter -----------------------------
    @classmethod
    def fit_to_state(cls, members: list[Variant], state: dict[str, torch.Tensor]) -> None:
        """Reshape to a file's tensors before loading them (a pruned rank); default: nothing."""

    @classmethod
    def prune(cls, members: list[Variant], tol: float) -> dict[str, int]:
        """Drop unused ranks; returns the new rank per shared group. Default: nothing to drop."""
        return {}

    def extra_repr(self) -> str:
        return f"method={self.method}, rank={self.rank}, scale={self.scale:g}"
