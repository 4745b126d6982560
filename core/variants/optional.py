"""The optional protocols: what a method may add to the required verbs.

Each is a small base class of no-op defaults that `Variant` inherits, so the handle can
call every hook on every variant without asking which method it holds; a method
implements a protocol by overriding its members. `implements(cls, Protocol)` says
whether a method class does (it overrides at least one of the protocol's members).

    protocol        members                                       methods that use it
    SharedTensors   shared_key, make_shared, shared_tensors       S2-LoRA, mixture (block router)
    GradientInit    init_from_gradient, init_keeps_output         LoRA-GA, LoRA-SB
    LossTerms       penalty, aux_losses, output_terms,            S2-LoRA, mixture, BA-LoRA
                    output_regularised
    TrainingHooks   before_optimizer_step, perturb, restore,      ALLoRA, LoRA-GGPO
                    perturbs
    Router          set_row_types, routing_stats                  mixture
    Prunable        shrink, active_rank, fit_to_state, prune      S2-LoRA
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..config import LoRAConfig
from ..errors import LoraKitError
from ..layers.kinds import LayerKind


class SharedTensors:
    """Tensors several modules share (S2-LoRA's basis per shape, a block's router)."""

    @classmethod
    def shared_key(cls, kind: LayerKind, path: str, config: LoRAConfig) -> str | None:
        """Which group of modules module `path` shares tensors with (modules with the same
        key get one `make_shared` object, made for the first of them), or None."""
        return None

    @classmethod
    def make_shared(cls, kind: LayerKind, config: LoRAConfig, dtype: torch.dtype,
                    device: torch.device, key: str) -> nn.Module | None:
        return None

    def shared_tensors(self) -> dict[str, nn.Parameter]:
        """Tensors shared with other modules, by their full file key."""
        return {}


class GradientInit:
    """An init from the base weight's full gradient (`lorakit.init_from_gradients`)."""

    #: after `init_from_gradient` the output still equals the base's (LoRA-GA's offset);
    #: False where the init is itself a first step (LoRA-SB)
    init_keeps_output: ClassVar[bool] = True

    def init_from_gradient(self, grad: torch.Tensor, weight: torch.Tensor) -> None:
        """Set the tensors from the base weight's full gradient (out × in, averaged over a few
        batches) and the weight itself; `lorakit.init_from_gradients` calls it."""
        raise LoraKitError(f"method {self.method!r} has no gradient-driven init; it is for "
                           "methods such as lora_ga and lora_sb")


class LossTerms:
    """Terms a method adds to the training loss, each already weighted."""

    output_regularised: ClassVar[bool] = False   # `output_terms` gives loss terms

    def penalty(self) -> torch.Tensor | None:
        """A term of this module's tensors alone (S2-LoRA's Σ|λ|), or None."""
        return None

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Weighted loss terms of this module's last forward, by name (a mixture's load
        balance); the handle averages them over modules (`Adapters.routing_terms`)."""
        return {}

    @classmethod
    def output_terms(cls, config: LoRAConfig, outputs: torch.Tensor,
                     base_outputs: torch.Tensor,
                     sequences: int | None = None) -> dict[str, torch.Tensor]:
        """Weighted loss terms on the model's outputs, by name (BA-LoRA); one set per
        adapter, not per module. `base_outputs`: the same inputs through the frozen base;
        `sequences`: how many sequences the rows of token outputs came from (None: each
        row is its own example)."""
        return {}


class TrainingHooks:
    """Steps of the training loop a method changes (the handle calls them on every variant,
    `AdapterModule` calls them through the handle)."""

    perturbs: ClassVar[bool] = False             # `perturb` does something: a second pass

    def before_optimizer_step(self) -> None:
        """Change this module's gradients before the optimizer reads them (ALLoRA)."""

    def perturb(self, weight: torch.Tensor, kind: LayerKind) -> bool:
        """Perturb this module for a second forward/backward, from the gradients of the
        first (LoRA-GGPO); `weight` is the base weight. Returns whether it did."""
        return False

    def restore(self) -> None:
        """Undo `perturb`."""


class Router:
    """What a router reports and reads (a mixture of experts); its losses are `LossTerms`."""

    def routing_stats(self) -> dict:
        """What a router did (a mixture: per-expert load and entropy); empty without one."""
        return {}

    def set_row_types(self, row_types: torch.Tensor | None) -> None:
        """Each batch row's data type, for methods whose losses depend on it (LoRAMoE)."""


class Prunable:
    """Ranks a method can switch off in training and drop afterwards (S2-LoRA's λ)."""

    def shrink(self, threshold) -> None:
        """The proximal step of `penalty`, after an optimizer step (S2-LoRA: λ moves
        `threshold(λ)` towards zero and stops there); a no-op for methods without one."""

    def active_rank(self, tol: float) -> int:
        return self.rank

    @classmethod
    def fit_to_state(cls, members: list, state: dict[str, torch.Tensor]) -> None:
        """Reshape to a file's tensors before loading them (a pruned rank); default: nothing."""

    @classmethod
    def prune(cls, members: list, tol: float) -> dict[str, int]:
        """Drop unused ranks; returns the new rank per shared group. Default: nothing to drop."""
        return {}


OPTIONAL = (SharedTensors, GradientInit, LossTerms, TrainingHooks, Router, Prunable)


def implements(cls: type, protocol: type) -> bool:
    """Whether method class `cls` overrides a member of optional `protocol` (one of
    `OPTIONAL`): whether the protocol does something for it."""
    def owner(name: str) -> type:
        return next(k for k in cls.__mro__ if name in vars(k))
    return any(owner(n) is not protocol for n in vars(protocol)
               if not n.startswith("__"))
