r"""L4Q (Jeon et al. 2024, "L4Q: Parameter Efficient Quantization-Aware Fine-Tuning on Large
Language Models"): LoRA trained inside the quantizer.

    W' = W + s·B A                                 W (out × in) frozen, full precision
    v  = (W' − b) / Δ,  per group of `group_size` inputs of a row (Δ, b: one per group)
    Ŵ  = round(clamp(v, 0, 2^k − 1)) · Δ + b        what the layer multiplies by
    y  = Ŵ x + bias                                 (the layer adds (Ŵ − W) x to base(x))

QLoRA and LoftQ quantize W first and train a full-precision B A beside it, so the trained
model is a low-bit matrix plus a high-precision adapter that cannot be folded into it.
L4Q quantizes after merging (sec. 3 and its Fig. 2): the LoRA update lives inside the quantizer,
so the trained model is one linearly quantized matrix per layer, integer codes and a
step size Δ and offset b per group, with no adapter left over. Δ and b are trained with
A and B, as in LSQ (Esser et al. 2020, sec. 2) with LSQ+'s learned offset (Bhalgat et
al. 2020): rounding passes its gradient straight through inside the range
and nothing outside it, and the gradients of Δ and b carry LSQ's scale
1 / sqrt(group_size · Q_P) (Esser et al. sec. 2.2), Q_P = 2^k − 1.

The quantizer is initialised from W itself, Δ = (max − min) / Q_P and b = min per group
(the min-max start of asymmetric quantization), so training starts at the quantized base
Q(W), not at W: `starts_at_base` is False, and `adapters.disabled()` is still the
full-precision base.

Memory (the paper's "memory-optimized layer design"): the forward saves x, A, B, Δ, b and a
reference to the frozen W, never an (out × in) tensor; the backward recomputes W' and Ŵ,
forms the weight gradient once, and turns it into the gradients of A, B, Δ and b without
W ever holding a gradient.

The base must be a full-precision nn.Linear: L4Q quantizes W + s·B A itself, so a base
already quantized (a QuantizedLinear) is refused, as are Conv1D, Conv2d and Embedding.
Merging writes Ŵ into the base weight (so the merged forward equals the unmerged one)
and keeps the weight it replaced to unmerge. The quantized model itself is written by
`lorakit.compress.l4q.export_l4q` (codes + Δ + b in safetensors).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import LoRAConfig
from ..errors import LoraKitError
from ..layers.kinds import LayerKind, LinearKind
from .lora import LoRA


def group_width(in_features: int, group_size: int, where: str = "L4Q") -> int:
    """Inputs per group: `group_size`, or the whole row when the row is shorter."""
    width = min(group_size, in_features)
    if in_features % width:
        raise LoraKitError(f"{where}: a Linear with in_features={in_features} cannot be split "
                           f"into groups of {group_size}; choose LoRAConfig.l4q.group_size "
                           "dividing it")
    return width


def _grouped(m: torch.Tensor, width: int) -> torch.Tensor:
    """(out × in) -> (out, in / width, width)."""
    return m.reshape(m.shape[0], -1, width)


def quantize_codes(merged: torch.Tensor, step: torch.Tensor, offset: torch.Tensor,
                   bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, v, inside) of an (out × in) matrix with (out, groups) step sizes and offsets:
    codes = round(clamp(v, 0, Q_P)) in the grouped shape (out, groups, width)."""
    width = merged.shape[1] // step.shape[1]
    v = (_grouped(merged, width) - offset[..., None]) / step[..., None]
    top = 2 ** bits - 1
    inside = (v >= 0) & (v <= top)
    return v.clamp(0, top).round(), v, inside


def dequantize_codes(codes: torch.Tensor, step: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Ŵ (out × in) from grouped codes: codes · Δ + b."""
    return (codes * step[..., None] + offset[..., None]).reshape(codes.shape[0], -1)


def fake_quantize(merged: torch.Tensor, step: torch.Tensor, offset: torch.Tensor,
                  bits: int) -> torch.Tensor:
    """Ŵ = Q(W') without gradients: what training multiplies by and what the export stores."""
    codes, _, _ = quantize_codes(merged, step, offset, bits)
    return dequantize_codes(codes, step, offset)


class _L4QDelta(torch.autograd.Function):
    """x ↦ x (Ŵ − W)ᵀ with Ŵ = Q(W + s·B A): saves no (out × in) tensor (see above)."""

    @staticmethod
    def forward(ctx, x, weight, a, b, step, offset, scale, bits):
        merged = weight + scale * (b @ a)
        delta = fake_quantize(merged, step, offset, bits) - weight
        ctx.save_for_backward(x, weight, a, b, step, offset)
        ctx.scale, ctx.bits = scale, bits
        return x @ delta.T

    @staticmethod
    def backward(ctx, grad):
        x, weight, a, b, step, offset = ctx.saved_tensors
        scale, bits = ctx.scale, ctx.bits
        merged = weight + scale * (b @ a)
        codes, v, inside = quantize_codes(merged, step, offset, bits)
        quantized = dequantize_codes(codes, step, offset)
        grad_x = grad @ (quantized - weight)
        g = grad.reshape(-1, grad.shape[-1]).T @ x.reshape(-1, x.shape[-1])   # dL/dŴ (out × in)
        gg = _grouped(g, codes.shape[-1])
        # straight through round inside the range, nothing outside (LSQ sec. 2.1)
        g_merged = (gg * inside).reshape(g.shape)
        # dŴ/dΔ = round(v) − v inside, 0 or Q_P outside; dŴ/db = 0 inside, 1 outside (LSQ+)
        lsq = 1.0 / math.sqrt(codes.shape[-1] * (2 ** bits - 1))
        g_step = (gg * (codes - v * inside)).sum(-1) * lsq
        g_offset = (gg * (~inside)).sum(-1) * lsq
        return (grad_x, None, scale * (b.T @ g_merged), scale * (g_merged @ a.T),
                g_step, g_offset, None, None)


class L4Q(LoRA):
    """LoRA's A and B inside a learned per-group quantizer of W + s·B A."""

    method = "l4q"
    summary = ('quantization-aware LoRA: W + BA fake-quantized with learned per-group step '
               'sizes (LSQ), exported as one integer matrix per layer (L4Q, Jeon et al. 2024).')
    routable = False
    starts_at_base = False
    peft = False
    peft_refusal = ("PEFT's LoRA layout adds B·A to the base weight, but L4Q's update is the "
                    "quantized W + B·A with learned step sizes; export the quantized model "
                    "with lorakit.compress.l4q.export_l4q")
    param_kinds = {"l4q_step": "quant", "l4q_offset": "quant"}
    options = ("l4q_bits", "l4q_group_size")

    def __init__(self, kind: LayerKind, config: LoRAConfig, dtype: torch.dtype,
                 device: torch.device, shared: nn.Module | None = None) -> None:
        refusal = self.kind_refusal(type(kind))
        if refusal:
            raise LoraKitError(f"{refusal}, not a {kind.describe()}")
        super().__init__(kind, config, dtype, device, shared)
        width = group_width(kind.in_features, config.l4q.group_size)
        groups = (kind.out_features, kind.in_features // width)
        self.l4q_step = nn.Parameter(torch.ones(groups, dtype=dtype, device=device))
        self.l4q_offset = nn.Parameter(torch.zeros(groups, dtype=dtype, device=device))
        # in the file, so a file alone says how its codes were made (file_delta)
        self.register_buffer("l4q_bits", torch.tensor(config.l4q.bits, device=device))
        self._merged_from: torch.Tensor | None = None

    @classmethod
    def kind_refusal(cls, kind):
        if kind is not LinearKind:
            return ("L4Q quantizes W + B·A of a full-precision nn.Linear itself (a base "
                    "already quantized, a QuantizedLinear, has no W to train through); "
                    "attach it to the model before any quantization")
        return None

    @classmethod
    def plan(cls, config, paths):
        if config.dropout > 0:
            raise LoraKitError("L4Q folds B·A into the weight before quantizing it, so there is "
                               "no separate adapter input to drop out: set LoRAConfig.dropout "
                               "to 0")
        return {}

    @property
    def bits(self) -> int:
        return int(self.l4q_bits)

    @torch.no_grad()
    def init_from_weight(self, weight):
        # min-max per group: Q(W) spans each group's range (asymmetric, Q_N = 0)
        g = _grouped(weight.to(self.l4q_step.dtype), weight.shape[1] // self.l4q_step.shape[1])
        low, high = g.amin(-1), g.amax(-1)
        self.l4q_step.copy_(((high - low) / (2 ** self.bits - 1)).clamp_min(1e-8))
        self.l4q_offset.copy_(low)

    def quantized_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """Ŵ = Q(W + s·B A) (out × in), no gradient: the weight the export writes."""
        with torch.no_grad():
            merged = weight.to(self.lora_A.dtype) + self.scale * (self.lora_B @ self.lora_A)
            return fake_quantize(merged, self.l4q_step, self.l4q_offset, self.bits)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The integer codes of Q(W + s·B A), (out, groups, width) as uint8."""
        with torch.no_grad():
            merged = weight.to(self.lora_A.dtype) + self.scale * (self.lora_B @ self.lora_A)
            return quantize_codes(merged, self.l4q_step, self.l4q_offset,
                                  self.bits)[0].to(torch.uint8)

    def forward(self, x: torch.Tensor, kind: LayerKind, base: nn.Module) -> torch.Tensor:
        a = self.lora_A
        weight = kind.to_matrix(base.weight).detach().to(a.dtype)
        return _L4QDelta.apply(x.to(a.dtype), weight, a, self.lora_B, self.l4q_step,
                               self.l4q_offset, self.scale, self.bits)

    def delta_weight(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        if weight is None:
            raise LoraKitError("L4Q's update depends on the base weight: pass it "
                               "(delta_weight(kind.to_matrix(base.weight)))")
        return self.quantized_weight(weight) - weight.to(self.lora_A.dtype)

    @torch.no_grad()
    def merge_into(self, weight: torch.Tensor, kind: LayerKind, factor: float) -> None:
        """W ← W + f·(Ŵ − W): Ŵ itself at f = 1; the weight replaced is kept to unmerge."""
        self._merged_from = weight.detach().clone()
        weight.add_(kind.to_weight(self.delta_weight(kind.to_matrix(weight)) * factor,
                                   weight.shape).to(weight.dtype))

    @torch.no_grad()
    def unmerge_from(self, weight: torch.Tensor, kind: LayerKind, factor: float) -> None:
        if self._merged_from is None:
            raise LoraKitError("L4Q unmerge without a merge: nothing to take out")
        weight.copy_(self._merged_from)
        self._merged_from = None

    @classmethod
    def file_keys(cls, path, kind, weight_shape):
        return [*super().file_keys(path, kind, weight_shape), f"{path}.l4q_step",
                f"{path}.l4q_offset", f"{path}.l4q_bits"]

    @classmethod
    def file_delta(cls, tensors, path, kind, weight_shape, scale, weight=None):
        if weight is None:
            raise LoraKitError(f"L4Q module {path!r}: its update is the quantized W + B·A, and "
                               "the base weight was not given")
        a, b = cls.file_factors(tensors, path, kind, weight_shape)
        w = kind.to_matrix(weight.float())
        merged = w + scale * (b.float() @ a.float())
        quantized = fake_quantize(merged, tensors[f"{path}.l4q_step"].float(),
                                  tensors[f"{path}.l4q_offset"].float(),
                                  int(tensors[f"{path}.l4q_bits"]))
        return kind.to_weight(quantized - w, weight_shape)
