"""Which modules an adapter adapts, and putting `LoRALayer`s in their place.

A target pattern is a glob on the module path (`*.query`, `encoder.*.attn.*`); one
without a dot also matches the last component. `find_targets` turns a config's
patterns into modules, or says clearly which pattern matched nothing and what does
exist. `wrap` / `unwrap` change the model from the outside only: the matched module is
replaced in its parent by a `LoRALayer` holding it as `.base`, and put back later.
The handle uses them for its adapters and the serving pool for its stacks.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from ..errors import LoraKitError, TargetNotFoundError
from ..layers import LoRALayer
from ..layers.kinds import kind_of, weight_shape

KINDS_TEXT = ("nn.Linear (and subclasses), lorakit's QuantizedLinear, GPT-2's Conv1D, nn.Conv2d "
              "and nn.Embedding")


def matches(path: str, pattern: str) -> bool:
    """Glob on the module path; a pattern without a dot also matches the last component."""
    if fnmatchcase(path, pattern):
        return True
    return "." not in pattern and fnmatchcase(path.rsplit(".", 1)[-1], pattern)


def describe(module: nn.Module) -> str:
    if isinstance(module, LoRALayer):
        module = module.base
    kind = kind_of(module)
    return kind.describe_shape(weight_shape(module)) if kind else type(module).__name__


def adaptable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Path -> module for every module lorakit can adapt (a `LoRALayer` stands for its base)."""
    found: dict[str, nn.Module] = {}
    inside: list[str] = []
    for path, module in model.named_modules():
        if any(path.startswith(q) for q in inside):
            continue
        if isinstance(module, LoRALayer):
            found[path] = module
            inside.append(path + ".")
        elif path and kind_of(module) is not None:
            found[path] = module
    return found


def find_targets(model: nn.Module, patterns: list[str]) -> dict[str, nn.Module]:
    """The adaptable modules whose paths match any pattern, in model order, or a clear error."""
    adaptable = adaptable_modules(model)
    found: dict[str, nn.Module] = {}
    for pattern in patterns:
        hits = {p: m for p, m in adaptable.items() if matches(p, pattern)}
        if not hits:
            others = [p for p, _ in model.named_modules() if p and matches(p, pattern)]
            if others:
                names = ", ".join(f"{p} ({describe(model.get_submodule(p))})" for p in others[:4])
                raise TargetNotFoundError(
                    f"target pattern {pattern!r} matched no module lorakit can adapt, only: "
                    f"{names}. lorakit adapts {KINDS_TEXT}; point the pattern at those layers "
                    "inside them.")
            examples = ", ".join(list(adaptable)[:8]) or "(the model has none)"
            raise TargetNotFoundError(
                f"target pattern {pattern!r} matched no module of {type(model).__name__}. "
                f"Adaptable modules that do exist: {examples}"
                + (" ..." if len(adaptable) > 8 else ""))
        found.update(hits)
    order = {p: i for i, p in enumerate(adaptable)}
    return dict(sorted(found.items(), key=lambda kv: order[kv[0]]))


def find_modules(model: nn.Module, patterns: list[str]) -> dict[str, nn.Module]:
    """Modules (of any kind) named by `modules_to_save` patterns; outermost match wins."""
    found: dict[str, nn.Module] = {}
    for pattern in patterns:
        hits = {p: m for p, m in model.named_modules() if p and matches(p, pattern)}
        if not hits:
            names = ", ".join(p for p, _ in list(model.named_children())[:8])
            raise TargetNotFoundError(
                f"modules_to_save pattern {pattern!r} matched no module; top-level modules: "
                f"{names}")
        found.update(hits)
    return {p: m for p, m in found.items()
            if not any(p.startswith(q + ".") for q in found if q != p)}


def _path_of(model: nn.Module, path_or_module: str | nn.Module) -> str:
    if isinstance(path_or_module, str):
        return path_or_module
    for path, module in model.named_modules():
        if module is path_or_module and path:
            return path
    raise LoraKitError(f"{type(path_or_module).__name__} is not a submodule of "
                       f"{type(model).__name__}")


def _set_child(model: nn.Module, path: str, child: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, child)


def wrap(model: nn.Module, path_or_module: str | nn.Module) -> LoRALayer:
    """Replace one module of `model` (by path, or the module itself) with a `LoRALayer`
    holding it as `.base`, with no adapters yet; a module already wrapped is returned as is."""
    path = _path_of(model, path_or_module)
    module = model.get_submodule(path)
    if isinstance(module, LoRALayer):
        return module
    kind = kind_of(module)
    if kind is None:
        raise LoraKitError(f"module {path!r} is {describe(module)}: lorakit adapts {KINDS_TEXT}")
    layer = LoRALayer(module, kind(module))
    layer.train(module.training)
    _set_child(model, path, layer)
    return layer


def unwrap(model: nn.Module, path_or_layer: str | LoRALayer) -> nn.Module:
    """Put the base module of a `LoRALayer` back in its place; returns the base."""
    path = _path_of(model, path_or_layer)
    layer = model.get_submodule(path)
    if not isinstance(layer, LoRALayer):
        raise LoraKitError(f"module {path!r} is not wrapped by lorakit")
    _set_child(model, path, layer.base)
    return layer.base
