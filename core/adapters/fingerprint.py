"""The fingerprint of an adapter's base: the names and weight shapes of what it adapts.

An adapter file records it, and loading onto another base fails with a message that
names the first module that differs, before any tensor is copied.
"""
from __future__ import annotations

from torch import nn

from ..errors import AdapterMismatchError
from ..layers import LoRALayer
from ..layers.kinds import KINDS, kind_of
from .targets import describe


class FingerprintMixin:
    """`Adapters.fingerprint` and `Adapters.kinds`: what a saved adapter is checked against."""

    def fingerprint(self, name: str | None = None) -> dict[str, list[int]]:
        """Names and weight shapes of what adapter `name` adapts: what its file is checked
        against (a Linear's [out, in], a Conv1D's [in, out], an Embedding's [num, dim])."""
        name = self._one(name)
        fp = {p: list(layer.base.weight.shape) for p, layer in self.layers.items()
              if name in layer.variants}
        for path, module in self.named[name].saved.items():
            for n, p in module.named_parameters():
                fp[f"{path}.{n}"] = list(p.shape)
        return fp

    def kinds(self, name: str | None = None) -> dict[str, str]:
        name = self._one(name)
        return {p: layer.kind.name for p, layer in self.layers.items() if name in layer.variants}


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
            kind = KINDS[kinds[path]]
            there = kind.describe_shape(shape)
            if module is None:
                raise AdapterMismatchError(
                    f"{source} was made for another base model: it adapts module {path!r} "
                    f"({there}), which this {type(model).__name__} does not have. Load it "
                    "onto the model it was trained on.")
            if kind_of(module) is not kind or list(module.weight.shape) != list(shape):
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
