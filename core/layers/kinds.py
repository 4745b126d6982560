r"""Layer kinds: how a low-rank update ΔW = B A meets each kind of base module.

Every variant keeps its factors as plain matrices, A (r × in) and B (out × r), and
the kind of the base module says what `in` and `out` are and how to apply them:

    kind        base weight          in            out     down(x, A)              up(h, B)
    linear      W (out × in)         in_features   out     x Aᵀ                    h Bᵀ
    conv1d      W (in × out)         nx            nf      x Aᵀ                    h Bᵀ   (GPT-2's Conv1D)
    embedding   E (num × dim)        num           dim     A[:, ids]ᵀ (a lookup)   h Bᵀ
    conv2d      W (out, in, k, k)    in·k·k        out     k×k conv to r channels  1×1 conv
    quantized_linear  as linear, W held quantized (`quantized.py`); reading it dequantizes

`to_weight` puts a ΔW matrix (out × in) into the base weight's own layout, so merging
is `W += to_weight(ΔW)` for every kind; PEFT's layouts (its key names, the conv
factors as 4-d tensors) are the kind's business too, so variants never ask which
kind they sit on. A kind's `file_name` is the layout an adapter file records: a
quantized Linear's adapter is a Linear's ("linear"), its base's precision is recorded
beside it (`lorakit.io.adapter_file`).

Code that needs only a base weight's shape, dtype or device reads them through
`weight_shape`, `weight_dtype` and `weight_device`, which never touch the weight of a
quantized base (reading `QuantizedLinear.weight` dequantizes the whole matrix).
"""
from __future__ import annotations

import sys
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LoraKitError
from .quantized import QuantizedLinear


def _conv1d_class():
    # a model holding GPT-2's Conv1D has imported transformers already: never import it here
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None) if module else None


class LayerKind:
    """How ΔW = B A (out × in) is applied to, and merged into, one kind of base module."""

    name: ClassVar[str]
    label: ClassVar[str]                   # how messages name the module kind
    float_input: ClassVar[bool] = True     # dropout and dtype casts apply to the input
    routable: ClassVar[bool] = True        # mixed-adapter batches (gather + bmm) work
    quantized: ClassVar[bool] = False      # the base holds its weight quantized: merging
                                           # into it means quantizing W + ΔW again
    peft_a: ClassVar[str] = "lora_A.weight"
    peft_b: ClassVar[str] = "lora_B.weight"

    def __init__(self, base: nn.Module) -> None:
        self.weight_shape = weight_shape(base)
        self.out_features, self.in_features = self.matrix_shape(self.weight_shape)

    @staticmethod
    def matches(module: nn.Module) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- shapes and layouts, from the weight shape alone (what a file records) ---------
    @staticmethod
    def matrix_shape(weight_shape) -> tuple[int, int]:
        """(out, in) of ΔW for a base weight of this shape."""
        return int(weight_shape[0]), int(weight_shape[1])

    @staticmethod
    def to_weight(delta: torch.Tensor, weight_shape) -> torch.Tensor:
        """ΔW (out × in) in the base weight's own layout."""
        return delta

    @staticmethod
    def to_matrix(weight: torch.Tensor) -> torch.Tensor:
        """The base weight as an (out × in) matrix: the inverse of `to_weight`."""
        return weight

    @staticmethod
    def to_peft(a: torch.Tensor, b: torch.Tensor, weight_shape) -> tuple[torch.Tensor, ...]:
        return a, b

    @staticmethod
    def from_peft(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a, b

    @classmethod
    def describe_shape(cls, weight_shape) -> str:
        out, inp = cls.matrix_shape(weight_shape)
        return f"{cls.label}(in={inp}, out={out})"

    def describe(self) -> str:
        return self.describe_shape(self.weight_shape)

    # --- the two projections -----------------------------------------------------------
    def down(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return F.linear(x, a)

    def up(self, h: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.linear(h, b)

    @classmethod
    def file_name(cls) -> str:
        """The kind an adapter file records for it: the adapter's layout."""
        return cls.name

    def per_rank(self, h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Scale each of the r channels of `down`'s output by v (r)."""
        return h * v

    # --- mixed-adapter batches: row i uses a_rows[i], b_rows[i] ------------------------
    def routed(self, x: torch.Tensor, a_stack: torch.Tensor, b_stack: torch.Tensor,
               index: torch.Tensor) -> torch.Tensor:
        """One gather of each row's A and B from the stacks, then two batched matmuls.

        a_stack (n, r, in), b_stack (n, out, r), index (batch,) → (batch, ..., out).
        """
        rows = x.reshape(x.shape[0], -1, x.shape[-1])                  # (batch, tokens, in)
        h = torch.bmm(rows, a_stack[index].transpose(1, 2))             # (batch, tokens, r)
        y = torch.bmm(h, b_stack[index].transpose(1, 2))                # (batch, tokens, out)
        return y.reshape(*x.shape[:-1], y.shape[-1])


class LinearKind(LayerKind):
    name, label = "linear", "Linear"

    @staticmethod
    def matches(module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)


class TransposedKind(LayerKind):
    """A base whose weight is stored (in × out), the transpose of ΔW's (out × in)."""

    @staticmethod
    def matrix_shape(weight_shape) -> tuple[int, int]:
        return int(weight_shape[1]), int(weight_shape[0])

    @staticmethod
    def to_weight(delta: torch.Tensor, weight_shape) -> torch.Tensor:
        return delta.T

    @staticmethod
    def to_matrix(weight: torch.Tensor) -> torch.Tensor:
        return weight.T


class Conv1DKind(TransposedKind):
    """GPT-2's `transformers.pytorch_utils.Conv1D`: y = x W + b with W stored (in × out)."""

    name, label = "conv1d", "Conv1D"

    @staticmethod
    def matches(module: nn.Module) -> bool:
        cls = _conv1d_class()
        return cls is not None and isinstance(module, cls)


class EmbeddingKind(TransposedKind):
    """`nn.Embedding`: A (r × num) is looked up like the table itself, B (dim × r) maps up.

    PEFT stores these as `lora_embedding_A` / `lora_embedding_B` (no `.weight`).
    """

    name, label = "embedding", "Embedding"
    float_input = False
    peft_a = "lora_embedding_A"
    peft_b = "lora_embedding_B"

    def __init__(self, base: nn.Embedding) -> None:
        super().__init__(base)
        self.padding_idx = base.padding_idx

    @staticmethod
    def matches(module: nn.Module) -> bool:
        return isinstance(module, nn.Embedding)

    @classmethod
    def describe_shape(cls, weight_shape) -> str:
        return f"Embedding(num={weight_shape[0]}, dim={weight_shape[1]})"

    def down(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, a.T, padding_idx=self.padding_idx)

    def routed(self, x, a_stack, b_stack, index):
        ids = x.reshape(x.shape[0], -1)                                 # (batch, tokens)
        h = a_stack.transpose(1, 2)[index[:, None], ids]                # (batch, tokens, r)
        y = torch.bmm(h, b_stack[index].transpose(1, 2))
        return y.reshape(*x.shape, y.shape[-1])


class Conv2dKind(LayerKind):
    """`nn.Conv2d` in PEFT's layout: A is a k×k conv from `in` down to r channels (same
    stride, padding, dilation as the base), B a 1×1 conv up to `out`."""

    name, label = "conv2d", "Conv2d"
    routable = False

    def __init__(self, base: nn.Conv2d) -> None:
        if base.groups != 1 or base.padding_mode != "zeros":
            raise LoraKitError(
                f"Conv2d with groups={base.groups}, padding_mode={base.padding_mode!r}: lorakit "
                "adapts convolutions with groups=1 and zero padding; leave this module out of "
                "the targets")
        super().__init__(base)
        self.stride, self.padding, self.dilation = base.stride, base.padding, base.dilation

    @staticmethod
    def matches(module: nn.Module) -> bool:
        return isinstance(module, nn.Conv2d)

    @staticmethod
    def matrix_shape(weight_shape) -> tuple[int, int]:
        out, inp, kh, kw = weight_shape
        return int(out), int(inp * kh * kw)

    @staticmethod
    def to_weight(delta: torch.Tensor, weight_shape) -> torch.Tensor:
        return delta.reshape(weight_shape)

    @staticmethod
    def to_matrix(weight: torch.Tensor) -> torch.Tensor:
        return weight.flatten(1)

    @staticmethod
    def to_peft(a, b, weight_shape):
        out, inp, kh, kw = weight_shape
        return a.reshape(a.shape[0], inp, kh, kw), b.reshape(out, b.shape[1], 1, 1)

    @staticmethod
    def from_peft(a, b):
        return a.flatten(1), b.flatten(1)

    @classmethod
    def describe_shape(cls, weight_shape) -> str:
        out, inp, kh, kw = weight_shape
        return f"Conv2d(in={inp}, out={out}, kernel={kh}x{kw})"

    def down(self, x, a):
        out, inp, kh, kw = self.weight_shape
        return F.conv2d(x, a.reshape(a.shape[0], inp, kh, kw), None, self.stride, self.padding,
                        self.dilation)

    def up(self, h, b):
        return F.conv2d(h, b[:, :, None, None])

    def per_rank(self, h, v):
        return h * v[:, None, None]       # channels first

    def routed(self, x, a_stack, b_stack, index):
        raise LoraKitError("mixed-adapter batches are not supported on Conv2d layers; "
                           "route only models whose adapted layers are Linear, Conv1D or "
                           "Embedding")


class QuantizedLinearKind(LinearKind):
    """`lorakit.layers.quantized.QuantizedLinear`: a Linear whose weight bitsandbytes or HQQ
    holds quantized. The adapter is a Linear's (same factors, same PEFT layout); reading
    `base.weight` dequantizes."""

    name, label = "quantized_linear", "QuantizedLinear"
    quantized = True

    @staticmethod
    def matches(module: nn.Module) -> bool:
        return isinstance(module, QuantizedLinear)

    @classmethod
    def file_name(cls) -> str:
        return LinearKind.name      # the base's precision is recorded beside the kind


KINDS: dict[str, type[LayerKind]] = {k.name: k for k in (LinearKind, Conv1DKind, EmbeddingKind,
                                                         Conv2dKind, QuantizedLinearKind)}


def kind_of(module: nn.Module) -> type[LayerKind] | None:
    """The kind class of a module lorakit can adapt, or None."""
    for kind in KINDS.values():
        if kind.matches(module):
            return kind
    return None


def weight_shape(module: nn.Module) -> tuple[int, ...]:
    """The base module's weight shape, without reading a quantized weight."""
    if isinstance(module, QuantizedLinear):
        return module.weight_shape
    return tuple(module.weight.shape)


def weight_dtype(module: nn.Module) -> torch.dtype:
    """The dtype the base's weight multiplies in (float32 for a quantized base's kernels)."""
    if isinstance(module, QuantizedLinear):
        return torch.float32
    return module.weight.dtype


def weight_device(module: nn.Module) -> torch.device:
    """The device of the base's weight, without reading a quantized weight."""
    if isinstance(module, QuantizedLinear):
        return module.device
    return module.weight.device


def kind_named(name: str, source: str = "adapter") -> type[LayerKind]:
    if name not in KINDS:
        raise LoraKitError(f"{source}: unknown layer kind {name!r}; this lorakit knows "
                           f"{', '.join(KINDS)} (a newer lorakit wrote it?)")
    return KINDS[name]
