"""The fingerprint of an adapter's base: the names and weight shapes of what it adapts,
and the precision each adapted base was held in.

An adapter file records both, and loading onto another base fails with a message that
names the first module that differs, before any tensor is copied. An adapter trained on
a quantized base (QLoRA) learned the quantized weights' residual, so loading it onto a
base of another precision is refused too, unless the caller says it means it
(`allow_other_precision`: merging a QLoRA adapter into full-precision weights is
common practice).
"""
from __future__ import annotations

from torch import nn

from ..errors import AdapterMismatchError
from ..layers import LoRALayer
from ..layers.kinds import kind_named, kind_of, weight_shape
from ..layers.quantized import QuantizedLinear
from .targets import describe


class FingerprintMixin:
    """`Adapters.fingerprint` and `Adapters.kinds`: what a saved adapter is checked against."""

    def fingerprint(self, name: str | None = None) -> dict[str, list[int]]:
        """Names and weight shapes of what adapter `name` adapts: what its file is checked
        against (a Linear's [out, in], a Conv1D's [in, out], an Embedding's [num, dim])."""
        name = self._one(name)
        fp = {p: list(layer.kind.weight_shape) for p, layer in self.layers.items()
              if name in layer.variants}
        for path, module in self.named[name].saved.items():
            for n, p in module.named_parameters():
                fp[f"{path}.{n}"] = list(p.shape)
        return fp

    def kinds(self, name: str | None = None) -> dict[str, str]:
        """The layout of each module adapter `name` adapts, as its file records it (a
        quantized Linear's adapter is a Linear's)."""
        name = self._one(name)
        return {p: layer.kind.file_name() for p, layer in self.layers.items()
                if name in layer.variants}

    def quantization(self, name: str | None = None) -> dict[str, dict]:
        """`QuantSpec.record()` of each quantized base adapter `name` adapts (the others are
        full precision and not listed)."""
        name = self._one(name)
        return {p: layer.base.spec.record() for p, layer in self.layers.items()
                if name in layer.variants and isinstance(layer.base, QuantizedLinear)}


def check_fingerprint(model: nn.Module, fingerprint: dict[str, list[int]],
                      kinds: dict[str, str], source: str) -> None:
    """Raise `AdapterMismatchError` naming the first module that differs from the adapter's base."""
    for path, shape in fingerprint.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            module = None
        if isinstance(module, LoRALayer):
            module = module.base
        if path in kinds:
            kind = kind_named(kinds[path], source)
            there = kind.describe_shape(shape)
            if module is None:
                raise AdapterMismatchError(
                    f"{source} was made for another base model: it adapts module {path!r} "
                    f"({there}), which this {type(model).__name__} does not have. Load it "
                    "onto the model it was trained on.")
            here = kind_of(module)
            if (here is None or here.file_name() != kind.file_name()
                    or list(weight_shape(module)) != list(shape)):
                raise AdapterMismatchError(
                    f"{source} was made for another base model: module {path!r} is {there} "
                    f"there but {describe(module)} in this {type(model).__name__}. Load it "
                    "onto the model it was trained on.")
            continue
        try:   # a modules_to_save tensor: `<module>.<param>`
            tensor = model.get_parameter(path)
        except AttributeError:
            tensor = None
        if tensor is None:
            raise AdapterMismatchError(
                f"{source} was made for another base model: it trains {path!r} in full, "
                f"which this {type(model).__name__} does not have. Load it onto the model it "
                "was trained on.")
        if list(tensor.shape) != list(shape):
            raise AdapterMismatchError(
                f"{source} was made for another base model: parameter {path!r} has "
                f"shape {list(shape)} there but {list(tensor.shape)} here.")


def _precision(spec: str | None) -> str:
    return f"quantized {spec}" if spec else "full precision"


def check_precision(model: nn.Module, meta: dict, source: str, allow: bool = False) -> None:
    """Raise `AdapterMismatchError` naming the first adapted module whose base precision
    differs from the one the adapter was trained on (`meta["quantization"]`); a file
    without the record (written before lorakit kept it) is not checked, nor is anything
    when `allow`."""
    records = meta.get("quantization")
    if records is None or allow:
        return
    for path in meta["kinds"]:
        module = model.get_submodule(path)
        if isinstance(module, LoRALayer):
            module = module.base
        here = str(module.spec) if isinstance(module, QuantizedLinear) else None
        there = (records.get(path) or {}).get("scheme")
        if here == there:
            continue
        if there and not here:
            todo = f"quantize this base the same way first (lorakit.quantize(model, {there!r}))"
        elif there:
            todo = (f"quantize the full-precision base as {there} instead "
                    f"(lorakit.quantize(model, {there!r}))")
        else:
            todo = "load it onto the full-precision base it was trained on"
        raise AdapterMismatchError(
            f"{source} was trained on a {_precision(there)} base but module {path!r} is "
            f"{_precision(here)} here: {todo}, or pass allow_other_precision=True to load it "
            "onto this base anyway (e.g. to merge a QLoRA adapter into full-precision "
            "weights)")
