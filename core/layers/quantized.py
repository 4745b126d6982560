r"""Quantized base weights: a frozen Linear whose weight a quantization library holds.

    x ─┬─► QuantizedLinear: the library's kernel (dequantize blocks, matmul), frozen ─┐
       └─► adapter (any method): scale · B A x, full precision, trained ────────────(+)─► y

QLoRA (Dettmers et al., 2023, section 3) keeps the base in 4-bit NormalFloat and trains
a full-precision LoRA on top; gradients flow through the dequantized weight into the
input, never into the codes. lorakit never quantizes by itself: the codes, scales and
kernels are the library's.

    scheme      library         what it stores per group of `group_size` weights
    nf4, fp4    bitsandbytes    4-bit NormalFloat / float codes, one absmax (itself
                                8-bit quantized with double quantization, QLoRA 3.1)
    int2..int8  HQQ             k-bit affine codes, one scale and one zero point
                                (half-quadratic optimised, no calibration data)

Both run forward and backward on a CPU with torch 2.13 (docs/compressed.md has the
figures that chose them). `QuantSpec.parse("nf4")`, `QuantSpec.parse("int3-g64")` read
the spec as the CLI and the adapter file write it.

`QuantizedLinear.weight` is the dequantized (out × in) weight, computed on each read,
so code that reads a base weight (DoRA's norms, LoRA-GA's init, inspect) works
unchanged; writing into it changes nothing, which is why merging into a quantized base
goes through `requantize` (an explicit choice: the merged model is quantized again,
not exact) and `LoRALayer.merge` refuses otherwise.
"""
from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import LoraKitError

BNB_SCHEMES = ("nf4", "fp4")
HQQ_BITS = (2, 3, 4, 8)
_SPEC = re.compile(r"^(?P<scheme>nf4|fp4|int(?P<bits>\d))(?:-g(?P<group>\d+))?$")


@dataclass(frozen=True)
class QuantSpec:
    """How a base weight is quantized: `scheme` (nf4, fp4: bitsandbytes; int2, int3, int4,
    int8: HQQ) and the number of weights sharing one scale (`group_size`)."""

    scheme: str = "nf4"
    group_size: int = 64
    double_quant: bool = True     # bitsandbytes: quantize the absmax too (QLoRA 3.1)

    def __post_init__(self) -> None:
        if self.scheme not in BNB_SCHEMES and not (
                self.scheme.startswith("int") and self.scheme[3:].isdigit()
                and int(self.scheme[3:]) in HQQ_BITS):
            raise LoraKitError(f"quantization scheme {self.scheme!r}: lorakit knows "
                               f"{', '.join(BNB_SCHEMES)} (bitsandbytes) and "
                               f"{', '.join(f'int{b}' for b in HQQ_BITS)} (HQQ)")
        if self.group_size < 2 or self.group_size & (self.group_size - 1):
            raise LoraKitError(f"quantization group size {self.group_size}: use a power "
                               "of two (32, 64, 128)")

    @classmethod
    def parse(cls, text: str | QuantSpec) -> QuantSpec:
        """'nf4', 'fp4-g128', 'int4', 'int3-g32' -> a spec (group size 64 by default)."""
        if isinstance(text, QuantSpec):
            return text
        match = _SPEC.match(str(text).strip().lower())
        if not match:
            raise LoraKitError(f"quantization {text!r}: write a scheme and an optional group "
                               "size, e.g. nf4, fp4-g128, int4, int3-g32")
        return cls(match["scheme"], int(match["group"] or 64))

    def __str__(self) -> str:
        return f"{self.scheme}-g{self.group_size}"

    @property
    def library(self) -> str:
        return "bitsandbytes" if self.scheme in BNB_SCHEMES else "hqq"

    @property
    def bits(self) -> int:
        return 4 if self.scheme in BNB_SCHEMES else int(self.scheme[3:])

    def record(self) -> dict:
        """What an adapter file keeps of its base's quantization."""
        return {"scheme": str(self), "library": self.library,
                "version": _version(self.library)}


def _version(library: str) -> str:
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _require(library: str):
    try:
        if library == "bitsandbytes":
            import bitsandbytes
            return bitsandbytes
        from hqq.core import quantize as hqq
        return hqq
    except ImportError as e:
        raise LoraKitError(f"quantized bases need {library}: pip install "
                           "'lorakit[compressed]'") from e


class QuantizedLinear(nn.Module):
    """A frozen Linear whose weight is held quantized by bitsandbytes or HQQ (`spec`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = QuantSpec.parse(spec)
        self.out_features, self.in_features = (int(s) for s in weight.shape)
        if self.in_features % self.spec.group_size:
            raise LoraKitError(f"a Linear with in_features={self.in_features} cannot be "
                               f"quantized in groups of {self.spec.group_size}: choose a "
                               "group size that divides it")
        self.weight_dtype = weight.dtype if weight.is_floating_point() else torch.float32
        self.inner = self._quantize(weight.detach().float(),
                                    None if bias is None else bias.detach().float())
        for p in self.inner.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: QuantSpec | str) -> QuantizedLinear:
        return cls(linear.weight, linear.bias, QuantSpec.parse(spec))

    def _quantize(self, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        lib = _require(self.spec.library)
        if self.spec.library == "bitsandbytes":
            inner = lib.nn.Linear4bit(self.in_features, self.out_features, bias=bias is not None,
                                      compute_dtype=torch.float32, quant_type=self.spec.scheme,
                                      compress_statistics=self.spec.double_quant)
            inner.weight = lib.nn.Params4bit(weight, requires_grad=False,
                                             quant_type=self.spec.scheme,
                                             blocksize=self.spec.group_size,
                                             compress_statistics=self.spec.double_quant)
            if bias is not None:
                inner.bias = nn.Parameter(bias, requires_grad=False)
            return inner.to(weight.device)     # bitsandbytes quantizes on the move
        dense = nn.Linear(self.in_features, self.out_features, bias=bias is not None)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if bias is not None:
                dense.bias.copy_(bias)
        config = lib.BaseQuantizeConfig(nbits=self.spec.bits, group_size=self.spec.group_size)
        return lib.HQQLinear(dense, config, compute_dtype=torch.float32,
                             device=str(weight.device))

    # --- what a Linear offers -----------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.float()).to(x.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.inner.bias

    @torch.no_grad()
    def dequantize(self) -> torch.Tensor:
        """The weight the kernel multiplies by, (out × in) float32."""
        if self.spec.library == "bitsandbytes":
            from bitsandbytes.functional import dequantize_4bit

            w = self.inner.weight
            return dequantize_4bit(w.data, w.quant_state).float()
        return self.inner.dequantize().float().reshape(self.out_features, self.in_features)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight, computed on each read (writes to it change nothing)."""
        return self.dequantize()

    @property
    def weight_shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    @property
    def device(self) -> torch.device:
        """Where the codes are (cheap: nothing is dequantized)."""
        return next(self.inner.parameters()).device

    def nbytes(self) -> int:
        """Bytes of the quantized weight: codes, scales, zero points (the bias left out)."""
        state = self.inner.state_dict()
        return sum(t.numel() * t.element_size() for k, t in state.items()
                   if torch.is_tensor(t) and k != "bias")

    @torch.no_grad()
    def requantize(self, weight: torch.Tensor) -> None:
        """Quantize `weight` (out × in) again in this layer's spec: how a merge lands."""
        self.inner = self._quantize(weight.detach().float(),
                                    None if self.bias is None else self.bias.detach().float())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"spec={self.spec}, library={self.spec.library}")


def dense_linear(layer: QuantizedLinear) -> nn.Linear:
    """A plain nn.Linear holding the dequantized weight (what `F.linear` would compute)."""
    out = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                    device=layer.device)
    with torch.no_grad():
        out.weight.copy_(layer.dequantize())
        if layer.bias is not None:
            out.bias.copy_(layer.bias)
    return out.requires_grad_(False)


__all__ = ["QuantSpec", "QuantizedLinear", "dense_linear"]
