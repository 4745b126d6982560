r"""DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation").

    W' = m ⊙ (W + s·B A) / ‖W + s·B A‖        m (out): trained magnitude, one per output row
                                             ‖·‖: each row's L2 norm over the inputs, detached

DoRA splits the weight into a magnitude and a direction (sec. 4.1, eq. 5) and learns
the direction with LoRA (B A) and the magnitude m in full. m starts at the row norms of
W, so W' = W at init (B = 0). The norm ‖W + s·B A‖ is treated as a constant, detached
from the graph (sec. 4.3): it still follows B A, but no gradient flows through it,
which saves the memory of its backward pass at no loss of accuracy (ibid., Table 5).

The norm axis is PEFT's (`peft.tuners.lora.dora`): one norm per output row of ΔW as an
(out × in) matrix, which for every layer kind is PEFT's own (a Linear's or Conv1D's
output features, a Conv2d's output channels over in·k·k, an Embedding's width).
What the layer adds to base(x), with g = m / ‖W + s·B A‖ (one per output):

    (g − 1) ⊙ W x  +  g ⊙ s·B A x

Merging writes W' itself; unmerging needs the norm the merge used (the merged weight
no longer knows it), so the merge keeps that (out) vector, as PEFT does, and divides it
back out. DoRA normalises the weight it sits on, `base.weight` as the layer holds it:
with another adapter merged into the same module, the order of merges matters.

In PEFT's layout DoRA is LoRA's A and B plus `lora_magnitude_vector` and
`"use_dora": true` in adapter_config.json; a Conv2d's magnitude is (1, out, 1, 1) there
(`_DoraConvNdLayer.get_weight_norm`), every other kind's (out). Its update is not B A,
so it is not routable (mixed-adapter batches).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import LoRAConfig
from ..errors import LoraKitError
from ..layers.kinds import LayerKind
from .lora import LoRA

PEFT_MAGNITUDE = "lora_magnitude_vector"


def _row_norm(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """‖W + ΔW‖ per output row of the (out × in) matrices, detached (sec. 4.3)."""
    return torch.linalg.vector_norm((weight + delta).detach(), dim=1)


class DoRA(LoRA):
    """LoRA's A and B for the direction, plus a trained magnitude per output row."""

    method = "dora"
    summary = ('a trained magnitude per output row times the direction W + BA, normalised (DoRA, '
               'Liu et al. 2024).')
    routable = False
    peft_config = {"use_dora": True}

    def __init__(self, kind: LayerKind, config: LoRAConfig, dtype: torch.dtype,
                 device: torch.device, shared: nn.Module | None = None) -> None:
        super().__init__(kind, config, dtype, device, shared)
        self.lora_magnitude = nn.Parameter(torch.ones(kind.out_features, dtype=dtype,
                                                      device=device))
        self._merged_norm: torch.Tensor | None = None

    @torch.no_grad()
    def init_from_weight(self, weight):
        # m = ‖W‖ per row, so the adapted model starts at the base (sec. 4.1)
        self.lora_magnitude.copy_(torch.linalg.vector_norm(weight.to(self.lora_A.dtype), dim=1))

    def _gain(self, weight: torch.Tensor, low_rank: torch.Tensor) -> torch.Tensor:
        """g = m / ‖W + s·B A‖ (out)."""
        return self.lora_magnitude / _row_norm(weight, low_rank)

    def forward(self, x: torch.Tensor, kind: LayerKind, base: nn.Module) -> torch.Tensor:
        a, b = self.lora_A, self.lora_B
        weight = kind.to_matrix(base.weight).to(a.dtype)
        if kind.float_input:
            x = self.dropout(x.to(a.dtype))
        g = self._gain(weight, (b @ a) * self.scale)
        lora = kind.up(kind.down(x, a) * self.scale, b)
        # kind.down with the whole weight as "A" is the bias-free base output W x
        return kind.per_rank(kind.down(x, weight), g - 1) + kind.per_rank(lora, g)

    def delta_weight(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        if weight is None:
            raise LoraKitError("DoRA's update depends on the base weight: pass it "
                               "(delta_weight(kind.to_matrix(base.weight)))")
        weight = weight.to(self.lora_A.dtype)
        low_rank = (self.lora_B @ self.lora_A) * self.scale
        return self._gain(weight, low_rank)[:, None] * (weight + low_rank) - weight

    @torch.no_grad()
    def merge_into(self, weight: torch.Tensor, kind: LayerKind, factor: float) -> None:
        """W ← (1 − f + f·g) ⊙ W + f·g ⊙ s·B A: W' itself at f = 1, an f-blend otherwise."""
        w = kind.to_matrix(weight).to(self.lora_A.dtype)
        low_rank = (self.lora_B @ self.lora_A) * self.scale
        norm = _row_norm(w, low_rank)
        g = self.lora_magnitude / norm
        merged = (1 - factor + factor * g)[:, None] * w + (factor * g)[:, None] * low_rank
        weight.copy_(kind.to_weight(merged, weight.shape).to(weight.dtype))
        self._merged_norm = norm.clone()

    @torch.no_grad()
    def unmerge_from(self, weight: torch.Tensor, kind: LayerKind, factor: float) -> None:
        if self._merged_norm is None:
            raise LoraKitError("DoRA unmerge without a merge: nothing to take out")
        w = kind.to_matrix(weight).to(self.lora_A.dtype)
        low_rank = (self.lora_B @ self.lora_A) * self.scale
        g = self.lora_magnitude / self._merged_norm
        base = (w - (factor * g)[:, None] * low_rank) / (1 - factor + factor * g)[:, None]
        weight.copy_(kind.to_weight(base, weight.shape).to(weight.dtype))
        self._merged_norm = None

    @classmethod
    def file_keys(cls, path, kind, weight_shape):
        return [*super().file_keys(path, kind, weight_shape), f"{path}.lora_magnitude"]

    @classmethod
    def file_delta(cls, tensors, path, kind, weight_shape, scale, weight=None):
        if weight is None:
            raise LoraKitError(f"DoRA module {path!r}: its update depends on the base weight, "
                               "which was not given")
        a, b = cls.file_factors(tensors, path, kind, weight_shape)
        w = kind.to_matrix(weight.float())
        low_rank = scale * (b.float() @ a.float())
        g = tensors[f"{path}.lora_magnitude"].float() / _row_norm(w, low_rank)
        return kind.to_weight(g[:, None] * (w + low_rank) - w, weight_shape)

    @classmethod
    def peft_extra(cls, tensors, path, kind, weight_shape):
        m = tensors[f"{path}.lora_magnitude"]
        if len(weight_shape) > 2:    # PEFT's conv magnitude keeps the conv's dims: (1, out, 1, 1)
            m = m.reshape(1, -1, *([1] * (len(weight_shape) - 2)))
        return {PEFT_MAGNITUDE: m}

    @classmethod
    def from_peft_extra(cls, extra, path, kind, weight_shape):
        if PEFT_MAGNITUDE not in extra:
            raise LoraKitError(f"PEFT DoRA adapter: module {path!r} has no {PEFT_MAGNITUDE}")
        return {f"{path}.lora_magnitude": extra[PEFT_MAGNITUDE].flatten()}
