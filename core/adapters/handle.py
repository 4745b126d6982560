"""`attach`: put named adapters into any `nn.Module`, and the `Adapters` handle that manages them.

The model is changed from the outside only (`targets.wrap`): each matched module (an
`nn.Linear` or subclass, GPT-2's `Conv1D`, an `nn.Conv2d`, an `nn.Embedding`) is
replaced in its parent by a `LoRALayer` that holds it as `.base`; `detach()` puts the
originals back. Several adapters, each with its own name, method, rank and targets,
live on one model; any subset is active (with weights), each merges on its own, and
`route` gives every row of a batch its own adapter in one pass. This file holds the
naming, adding, deleting, activation, merging and saving; the handle's other jobs are
its mixins, one file each (state, fingerprint, routing, hooks), and every
method-specific step goes through the variant protocol (`lorakit.variants`).
"""
from __future__ import annotations

import contextlib
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from ..config import LoRAConfig
from ..errors import LoraKitError
from ..io.adapter_file import save_adapter
from ..layers import LoRALayer, variant_layers
from ..layers.kinds import QuantizedLinearKind, kind_of, weight_device
from ..layers.quantized import QuantizedLinear, QuantSpec
from ..variants import Variant, adapter_dtype, variant_named
from .fingerprint import FingerprintMixin
from .hooks import HooksMixin
from .routing import RoutingMixin
from .state import StateMixin
from .targets import _set_child, adaptable_modules, find_modules, find_targets, unwrap, wrap

DEFAULT = "default"
# model -> its one handle (`entry.py` adds, `Adapters._forget` drops)
_HANDLES: weakref.WeakKeyDictionary[nn.Module, Adapters] = weakref.WeakKeyDictionary()


@dataclass
class _Named:
    """What the handle keeps per adapter besides its variants: config and saved modules."""
    config: LoRAConfig
    saved: dict[str, nn.Module]


ActiveSpec = str | Sequence[str] | Mapping[str, float] | None



class Adapters(StateMixin, FingerprintMixin, RoutingMixin, HooksMixin):
    """The handle of a model's adapters: add, list, activate, route, save, merge, delete.

    Naming, adding, activation and merging live here; `StateMixin` (state.py) holds the
    tensors and state dicts, `FingerprintMixin` (fingerprint.py) what a file is checked
    against, `RoutingMixin` (routing.py) the routed batch and `HooksMixin` (hooks.py) the
    methods' training terms and hooks.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers: dict[str, LoRALayer] = {}
        self.named: dict[str, _Named] = {}
        self._active: dict[str, float] = {}
        self._requires_grad_before = {id(p): p.requires_grad for p in model.parameters()}

    # --- names and configs --------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Adapter names in the order they were attached (the order `route` ids index)."""
        return list(self.named)

    def _one(self, name: str | None) -> str:
        if name is None:
            if len(self.named) == 1:
                return next(iter(self.named))
            raise LoraKitError(f"this model carries adapters {self.names}: name the one you mean")
        if name not in self.named:
            raise LoraKitError(f"no adapter named {name!r} on this model; it has {self.names}")
        return name

    @property
    def configs(self) -> dict[str, LoRAConfig]:
        return {n: a.config for n, a in self.named.items()}

    @property
    def config(self) -> LoRAConfig:
        """The config of the model's only adapter (see `configs` when there are several)."""
        return self.named[self._one(None)].config

    @property
    def saved(self) -> dict[str, nn.Module]:
        return {p: m for a in self.named.values() for p, m in a.saved.items()}

    def variants(self, name: str | None = None) -> dict[str, Variant]:
        """Module path -> adapter `name`'s variant, for every module it adapts."""
        return variant_layers(self.layers, self._one(name))

    # --- adding and deleting ------------------------------------------------------------
    def add(self, config: LoRAConfig, name: str = DEFAULT) -> Adapters:
        if not name or "." in name or "/" in name:
            raise LoraKitError(f"adapter name {name!r}: use a non-empty name without '.' or '/'")
        if name in self.named:
            raise LoraKitError(f"this model already has an adapter named {name!r}; delete() it "
                               "or attach under another name")
        cls = variant_named(config.method, source=f"adapter {name!r}")
        targets = find_targets(self.model, config.targets)
        saved = find_modules(self.model, config.modules_to_save) if config.modules_to_save else {}
        clash = [p for p in targets if any(p == s or p.startswith(s + ".") for s in saved)]
        if clash:
            raise LoraKitError(f"module {clash[0]!r} is both an adapter target and in "
                               "modules_to_save; choose one")
        taken = {p: n for n, a in self.named.items() for p in a.saved}
        for path in saved:
            if path in taken:
                raise LoraKitError(f"module {path!r} is already trained in full by adapter "
                                   f"{taken[path]!r}; two adapters cannot both save it")
        plan = cls.plan(config, list(targets))    # per-module configs; refusals come first
        originals = self._quantize_targets(config, cls, targets)
        first = not self.named
        if first:
            self.model.requires_grad_(False)
        shared: dict[str, nn.Module] = {}
        try:
            for path in targets:
                layer = self.layers[path] = wrap(self.model, path)
                base_weight = layer.base.weight       # a quantized base: dequantized, once
                own = plan.get(path, config)
                dtype, device = adapter_dtype(base_weight), weight_device(layer.base)
                key = cls.shared_key(layer.kind, path, own)
                if key is not None and key not in shared:
                    shared[key] = cls.make_shared(layer.kind, own, dtype, device, key)
                variant = cls(layer.kind, own, dtype, device,
                              shared.get(key) if key is not None else None)
                variant.init_from_weight(layer.kind.to_matrix(base_weight.detach()))
                layer.variants[name] = variant.train(layer.base.training)
        except Exception:
            for path, original in originals.items():    # the model as it was
                layer = self.model.get_submodule(path)
                if isinstance(layer, LoRALayer):
                    layer.base, layer.kind = original, kind_of(original)(original)
                else:
                    _set_child(self.model, path, original)
            raise
        order = {p: i for i, p in enumerate(adaptable_modules(self.model))}
        self.layers = dict(sorted(self.layers.items(), key=lambda kv: order[kv[0]]))
        for module in saved.values():
            module.requires_grad_(True)
        self.named[name] = _Named(config, saved)
        if first:
            self.set_active(name)
        return self

    def _quantize_targets(self, config: LoRAConfig, cls: type[Variant],
                          targets: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """With `config.base_quantization`, the targeted Linear bases quantized in place
        (`lorakit.quantize`); returns the replaced originals by path, to put back if the
        attach fails. Everything that refuses is checked before a module changes."""
        if config.base_quantization is None:
            return {}
        from ..compress.quantize import quantize_modules

        spec = QuantSpec.parse(config.base_quantization)
        refusal = cls.kind_refusal(QuantizedLinearKind)
        if refusal:
            raise LoraKitError(f"method {config.method!r} cannot train on a quantized base "
                               f"(base_quantization {spec}): {refusal}")
        linear = []
        for path, module in targets.items():
            base = module.base if isinstance(module, LoRALayer) else module
            if isinstance(base, QuantizedLinear) and base.spec != spec:
                raise LoraKitError(f"module {path!r} is already quantized as {base.spec}, not "
                                   f"{spec}: use base_quantization {str(base.spec)!r} for "
                                   "every adapter on it")
            if isinstance(module, LoRALayer) and isinstance(base, nn.Linear):
                raise LoraKitError(
                    f"module {path!r} already carries adapters {list(module.variants)} on its "
                    f"full-precision base, so base_quantization {spec} would change their base: "
                    "quantize the model before attaching any adapter (lorakit.quantize(model, "
                    f"{str(spec)!r}))")
            if isinstance(module, nn.Linear):
                linear.append(path)
        report = quantize_modules(self.model, spec, linear)
        return {p: targets[p] for p in report.quantized}

    def delete(self, name: str) -> None:
        """Remove adapter `name`; layers left without adapters get their base module back."""
        name = self._one(name)
        self.unmerge(name)
        for path, layer in list(self.layers.items()):
            if name in layer.variants:
                del layer.variants[name]
                layer.active.pop(name, None)
                if not len(layer.variants):
                    unwrap(self.model, path)
                    del self.layers[path]
        for module in self.named[name].saved.values():
            for p in module.parameters():
                p.requires_grad_(self._requires_grad_before.get(id(p), False))
        del self.named[name]
        self._active.pop(name, None)
        if not self.named:
            self._forget()

    def _forget(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(self._requires_grad_before.get(id(p), p.requires_grad))
        _HANDLES.pop(self.model, None)

    def detach(self, merge: bool = False, requantize: bool = False) -> nn.Module:
        """Remove every adapter (folding the active ones into the base weights if `merge`;
        `requantize` as in `merge`, for quantized bases). A quantized base stays quantized."""
        if merge:
            self.merge(requantize=requantize)
        for layer in self.layers.values():
            if not merge:
                for name in list(layer.merged):
                    layer.unmerge(name)
        for path in self.layers:
            unwrap(self.model, path)
        self.layers, self.named, self._active = {}, {}, {}
        self._forget()
        return self.model

    # --- which adapters act -------------------------------------------------------------
    @property
    def active(self) -> dict[str, float]:
        """Active adapter names and their weights."""
        return dict(self._active)

    def set_active(self, spec: ActiveSpec) -> None:
        """One name, several names (weight 1 each), {name: weight}, or None for none."""
        if spec is None:
            active: dict[str, float] = {}
        elif isinstance(spec, str):
            active = {spec: 1.0}
        elif isinstance(spec, Mapping):
            active = {n: float(w) for n, w in spec.items()}
        else:
            active = {n: 1.0 for n in spec}
        for n in active:
            self._one(n)
        for layer in self.layers.values():
            for n, w in layer.merged.items():
                if active.get(n) != w:
                    raise LoraKitError(f"adapter {n!r} is merged into the base weights with "
                                       f"weight {w:g}; unmerge({n!r}) before changing it")
        self._active = active
        for layer in self.layers.values():
            layer.active = {n: w for n, w in active.items() if n in layer.variants}

    @contextlib.contextmanager
    def activated(self, spec: ActiveSpec):
        """`set_active(spec)` inside the block, the previous choice after it."""
        before = self.active
        self.set_active(spec)
        try:
            yield self.model
        finally:
            self.set_active(before)

    def set_enabled(self, enabled: bool) -> None:
        if not enabled and self.merged:
            raise LoraKitError("adapters are merged into the base weights; unmerge() before "
                               "disabling them, or use `with adapters.disabled():`")
        for layer in self.layers.values():
            layer.enabled = enabled

    @contextlib.contextmanager
    def disabled(self):
        """The frozen base model inside the block, without copying it."""
        merged = {p: dict(layer.merged) for p, layer in self.layers.items()}
        for layer in self.layers.values():
            for name in list(layer.merged):
                layer.unmerge(name)
        states = {p: layer.enabled for p, layer in self.layers.items()}
        self.set_enabled(False)
        try:
            yield self.model
        finally:
            for p, layer in self.layers.items():
                layer.enabled = states[p]
                for name, weight in merged[p].items():
                    layer.merge(name, weight)

    def save(self, path, metadata: dict | None = None, name: str | None = None):
        return save_adapter(self, path, metadata, name=name)

    # --- merging ------------------------------------------------------------------------
    @property
    def merged(self) -> bool:
        return any(layer.merged for layer in self.layers.values())

    def merge(self, name: str | None = None, requantize: bool = False) -> None:
        """Fold adapter `name` (default: every active one) into the base weights, with its
        active weight: inference at the base model's cost.

        A quantized base cannot hold W + ΔW exactly, so merging into one is refused unless
        `requantize`: then W + ΔW is quantized again in the base's own spec (the merged
        model differs from the unmerged one by that quantization error) and the merge
        cannot be undone."""
        names = list(self._active) if name is None else [self._one(name)]
        for n in names:
            if n not in self._active:
                raise LoraKitError(f"adapter {n!r} is not active; set_active it before merging")
            quantized = [p for p, layer in self.layers.items() if n in layer.variants
                         and n not in layer.merged and layer.kind.quantized]
            if quantized and not requantize:
                spec = self.layers[quantized[0]].base.spec
                raise LoraKitError(
                    f"module {quantized[0]!r} is quantized ({spec}), so merging adapter {n!r} "
                    "into it is not exact: pass requantize=True to quantize W + dW again "
                    "(merge(..., requantize=True); it cannot be unmerged), or merge into "
                    "full-precision weights (load the adapter onto a full-precision base with "
                    "allow_other_precision=True, or `lorakit adapter merge` on its weights file)")
        for n in names:
            for layer in self.layers.values():
                if n in layer.variants:
                    layer.merge(n, self._active[n], requantize=requantize)

    def unmerge(self, name: str | None = None) -> None:
        names = self.names if name is None else [self._one(name)]
        for layer in self.layers.values():
            for n in names:
                layer.unmerge(n)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}: {a.config.method} r={a.config.rank}"
                          for n, a in self.named.items())
        return (f"Adapters({inner}; active={self._active}, layers={len(self.layers)}, "
                f"trainable={self.trainable_count():,}, total={self.total_count():,})")
