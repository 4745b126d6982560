"""Routed batches: each row (or token) of one batch gets its own adapters, in one pass.

A `RoutedBatch` is what a `LoRALayer` needs for that, handed to it through
`LoRALayer.route_batch` and taken back after the block (`handed`). Two shapes:

    by row    index (batch,) -> an adapter in `names`; len(names) is "no adapter"
              stacks: A (n+1, r, in), scale·B (n+1, out, r), or None (built per forward)
              -> a gather of each row's A and B and two batched matmuls (Punica's BGMV)
    by token  weights (..., n): each token's weight for each adapter (X-LoRA's pass)
              -> Σ_n w_n · scale_n · B_n A_n x over stacked factors

`Adapters.route`, the serving pool's `routed` and X-LoRA's `scaled` all hand their
layers one of these; nothing else writes routing state on a layer.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import LoraKitError
from ..layers.kinds import weight_device


@dataclass(frozen=True)
class RoutedBatch:
    """One layer's view of a routed batch: by row (`index`) or by token (`weights`)."""
    names: list[str]
    index: torch.Tensor | None = None
    stacks: tuple[torch.Tensor, torch.Tensor] | None = None
    weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.index is None) == (self.weights is None):
            raise LoraKitError("a routed batch is by row (index) or by token (weights), "
                               "exactly one of them")

    @property
    def by_row(self) -> bool:
        return self.index is not None


@contextlib.contextmanager
def handed(batches: Iterable[tuple[nn.Module, RoutedBatch]]):
    """Each `LoRALayer` gets its routed batch inside the block, none after it, even on an
    error. (The layers import this file's type for their annotations only: no import back.)"""
    batches = list(batches)
    try:
        for layer, batch in batches:
            layer.route_batch(batch)
        yield
    finally:
        for layer, _ in batches:
            layer.route_batch(None)


def route_index(ids, names: list[str]) -> torch.Tensor:
    """Row -> adapter index from ids (indices into `names`, names, -1 or None for the base);
    the bare base becomes index len(names), the stacks' row of zeros."""
    if isinstance(ids, torch.Tensor):
        index = ids.long().flatten().clone()
    else:
        lookup = {n: i for i, n in enumerate(names)}
        try:
            index = torch.tensor([-1 if i is None else lookup[i] if isinstance(i, str)
                                  else int(i) for i in ids], dtype=torch.long)
        except KeyError as err:
            raise LoraKitError(f"route: no adapter named {err.args[0]!r}; this model has "
                               f"{names}") from None
    bad = index[(index < -1) | (index >= len(names))]
    if len(bad):
        raise LoraKitError(f"route: adapter id {int(bad[0])} is out of range; ids are "
                           f"0..{len(names) - 1} for {names}, or -1 for the bare base")
    index[index == -1] = len(names)
    return index


class RoutingMixin:
    """`Adapters.route`: one adapter per batch row, through the routed-batch object."""

    @contextlib.contextmanager
    def route(self, ids):
        """Each row of the batch uses its own adapter, in one pass (Punica's BGMV idea).

        `ids`: one entry per row, an index into `names` or a name, -1 or None for the
        bare base. Inside the block the model's forward gathers each row's A and B from
        stacked tensors (padded to the largest rank) and runs two batched matmuls; the
        active set is ignored. Without autograd the stacks are built once and kept until an
        adapter's tensors change; with autograd they are built in every forward, so
        gradients reach each row's own adapter.
        """
        names = self.names
        index = route_index(ids, names)
        if self.merged:
            raise LoraKitError("unmerge() before a routed forward: merged adapters would act "
                               "on every row")
        build = not torch.is_grad_enabled()
        batches = []
        for path, layer in self.layers.items():
            if not layer.kind.routable:
                raise LoraKitError(f"module {path!r} is a {layer.kind.describe()}: "
                                   "mixed-adapter batches work on Linear, Conv1D and "
                                   "Embedding layers")
            fixed = [n for n, v in layer.variants.items() if not v.routable]
            if fixed:
                raise LoraKitError(f"adapter {fixed[0]!r} ({layer.variants[fixed[0]].method})"
                                   " is not a product B A of its own and cannot be routed; "
                                   "delete it or route on a model without it")
            stacks = layer.cached_stacks(names) if build else None
            batches.append((layer, RoutedBatch(names, index.to(weight_device(layer.base)),
                                               stacks)))
        with handed(batches):
            yield self.model
