r"""`LoRALayer`: a frozen base module plus any number of named adapters.

    x ─┬─► base (Linear, QuantizedLinear, Conv1D, Conv2d, Embedding) ────────┐
       ├─► adapter "a" (any method): w_a · ΔW_a x ──────────────────────────(+)──► y
       └─► adapter "b" ...            w_b · ΔW_b x ──────────────────────────┘

    y = base(x) + Σ_active w_n · scale_n · B_n A_n x

The layer wraps the base module from the outside (`layer.base`), so whatever the
base's own forward does (openai-whisper's `Linear` casts its weight to the input
dtype) still happens, and attributes code reads off the base (`weight`,
`in_features`, `nf`, `padding_idx`) are still there. Each adapter is a `Variant` in
`layer.variants[name]`; the layer only sums them, merges them into the base weight
and, in a mixed-adapter batch, gathers each row's own factors. `enabled = False`
makes the layer the frozen base, which is how a teacher or a reference comes free.
A routed batch (`lorakit.adapters.routing.RoutedBatch`: each row its own adapter, or
each token its own adapter weights) is handed in through `route_batch`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LoraKitError
from .kinds import LayerKind

if TYPE_CHECKING:   # the variants import this package's kinds: no import back at load time
    from ..adapters.routing import RoutedBatch
    from ..variants import Variant


class LoRALayer(nn.Module):
    """A base module with named adapters: active ones add to its output, merged ones live
    in its weight."""

    def __init__(self, base: nn.Module, kind: LayerKind) -> None:
        super().__init__()
        self.base = base
        self.kind = kind
        self.variants = nn.ModuleDict()
        self.active: dict[str, float] = {}    # name -> weight
        self.merged: dict[str, float] = {}    # name -> weight folded into base.weight
        self.requantized: set[str] = set()    # merged into a quantized base: for good
        self.enabled = True
        self._batch: RoutedBatch | None = None     # see `route_batch`
        self._stack_cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base", "variants"):
                raise
            return getattr(self._modules["base"], name)

    # --- forward ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.enabled:
            return y
        if self._batch is not None:
            out = self.routed(x, self._batch) if self._batch.by_row else self.scaled(x, self._batch)
            return y + out.to(y.dtype)
        for name, weight in self.active.items():
            if name not in self.merged:
                y = y.add(self.variants[name](x, self.kind, self.base).to(y.dtype),
                          alpha=weight)
        return y

    # --- mixed-adapter batches ----------------------------------------------------------
    def route_batch(self, batch: RoutedBatch | None) -> None:
        """Forwards from now on follow `batch` (one adapter per row, or per-token adapter
        weights) instead of the active set; None goes back to the active set."""
        self._batch = batch

    @property
    def routing(self) -> RoutedBatch | None:
        """The routed batch this layer was handed, or None."""
        return self._batch

    def stacks(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """A (n+1, r, in) and scale·B (n+1, out, r) of adapters `names` padded to the largest
        rank; a row of zeros for an adapter this layer lacks, and one more for 'no adapter'."""
        factors = [self.variants[n].factors() if n in self.variants else None for n in names]
        ranks = [f[0].shape[0] for f in factors if f is not None]
        r = max(ranks, default=1)
        ref = next(iter(self.variants.values())).factors()[0]
        a_zero = ref.new_zeros(r, self.kind.in_features)
        b_zero = ref.new_zeros(self.kind.out_features, r)
        a_rows, b_rows = [], []
        for name, f in zip(names, factors):
            if f is None:
                a_rows.append(a_zero)
                b_rows.append(b_zero)
                continue
            a, b = f
            pad = r - a.shape[0]
            a_rows.append(F.pad(a, (0, 0, 0, pad)))
            b_rows.append(F.pad(b * self.variants[name].scale, (0, pad)))
        a_rows.append(a_zero)
        b_rows.append(b_zero)
        return torch.stack(a_rows), torch.stack(b_rows)

    @torch.no_grad()
    def cached_stacks(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`stacks(names)`, rebuilt only when an adapter's tensors (its fixed buffers too)
        changed since the last call (a tensor's version counter moves with every in-place
        update, an optimizer step's too), so a server routing batch after batch stacks its
        adapters once."""
        key = tuple((n, tuple((id(t), t._version) for t in (*self.variants[n].parameters(),
                                                            *self.variants[n].buffers())))
                    if n in self.variants else n for n in names)
        if self._stack_cache is None or self._stack_cache[0] != key:
            self._stack_cache = (key, self.stacks(names))
        return self._stack_cache[1]

    def routed(self, x: torch.Tensor, batch: RoutedBatch) -> torch.Tensor:
        index, names, stacks = batch.index, batch.names, batch.stacks
        if x.shape[0] != index.shape[0]:
            raise LoraKitError(f"routed forward: the batch has {x.shape[0]} rows but "
                               f"{index.shape[0]} adapter ids were given")
        if stacks is None:    # training: rebuilt every forward so gradients reach the factors
            stacks = self.stacks(names)
        a_stack, b_stack = stacks
        if self.kind.float_input:
            x = x.to(a_stack.dtype)
        first = index[0]
        if bool((index == first).all()):   # one adapter for every row: two plain matmuls
            return self.kind.up(self.kind.down(x, a_stack[first]), b_stack[first])
        return self.kind.routed(x, a_stack, b_stack, index)

    def scaled(self, x: torch.Tensor, batch: RoutedBatch) -> torch.Tensor:
        """Σ_n s_n · scale_n · B_n A_n x with a weight per token and adapter (X-LoRA's second
        pass): the adapters' stacked factors, two matmuls, no loop over adapters."""
        from ..variants.mixture import mixed

        weights, names = batch.weights, batch.names
        a_stack, b_stack = self.cached_stacks(names)      # frozen adapters: stacked once
        rows = x.reshape(-1, x.shape[-1]).to(a_stack.dtype)
        if weights.numel() != rows.shape[0] * len(names):
            raise LoraKitError(f"X-LoRA: this layer sees {rows.shape[0]} token rows but the "
                               f"scalings hold {weights.numel() // len(names)}; both passes "
                               "must see the same tokens")
        y = mixed(self.kind, rows, a_stack[:-1], b_stack[:-1], weights.reshape(-1, len(names)))
        return y.reshape(*x.shape[:-1], y.shape[-1])

    # --- merging ------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, name: str, weight: float = 1.0, requantize: bool = False) -> None:
        """base.weight += weight · ΔW. A quantized base (`QuantizedLinear`) cannot hold the
        sum exactly: refused unless `requantize`, which quantizes W + ΔW again in the base's
        own spec, for good (`unmerge` refuses it)."""
        if name in self.merged:
            return
        if self.kind.quantized:
            if not requantize:
                raise LoraKitError(f"{self.kind.describe()} is quantized ({self.base.spec}): "
                                   f"merging adapter {name!r} into it is not exact; pass "
                                   "requantize=True to quantize W + dW again")
            weight_matrix = self.base.dequantize()
            self.variants[name].merge_into(weight_matrix, self.kind, weight)
            self.base.requantize(weight_matrix)
            self.requantized.add(name)
        else:
            self.variants[name].merge_into(self.base.weight, self.kind, weight)
        self.merged[name] = weight

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        if name not in self.merged:
            return
        if name in self.requantized:
            raise LoraKitError(
                f"adapter {name!r} was merged into a quantized {self.kind.describe()} by "
                f"quantizing W + dW again ({self.base.spec}): the codes before it are gone, so "
                "it cannot be unmerged; quantize the original base again to start over, or "
                "detach(merge=True, requantize=True) to keep the merged model")
        self.variants[name].unmerge_from(self.base.weight, self.kind, self.merged.pop(name))

    def extra_repr(self) -> str:
        return (f"kind={self.kind.name}, active={self.active}, merged={list(self.merged)}, "
                f"enabled={self.enabled}")


def variant_layers(layers: dict[str, LoRALayer], name: str) -> dict[str, Variant]:
    """Module path -> the `name` adapter's variant, for every layer that carries it."""
    return {p: layer.variants[name] for p, layer in layers.items() if name in layer.variants}
