"""`attach`: put named adapters into any `nn.Module`, and the `Adapters` handle that manages them.

The model is changed from the outside only: each matched module (an `nn.Linear` or
subclass, GPT-2's `Conv1D`, an `nn.Conv2d`, an `nn.Embedding`) is replaced in its
parent by a `LoRALayer` that holds it as `.base`; `detach()` puts the originals back.
Several adapters, each with its own name, method, rank and targets, live on one
model; any subset is active (with weights), each merges on its own, and `route`
gives every row of a batch its own adapter in one pass. Which parameters are
adapters is never guessed from names: the handle knows its layers (torchtune's
`adapter_params()` idea), and every method-specific step goes through the variant
protocol (`lorakit.variants`).
"""
from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from torch import nn

from ..config import LoRAConfig
from ..errors import AdapterMismatchError, LoraKitError, TargetNotFoundError
from ..io.adapter_file import read_adapter, save_adapter
from ..layers import LoRALayer, variant_layers
from ..layers.kinds import KINDS, kind_of
from ..variants import Variant, adapter_dtype, variant_named

DEFAULT = "default"
_HANDLES: weakref.WeakKeyDictionary[nn.Module, Adapters] = weakref.WeakKeyDictionary()


def matches(path: str, pattern: str) -> bool:
    """Glob on the module path; a pattern without a dot also matches the last component."""
    if fnmatchcase(path, pattern):
        return True
    return "." not in pattern and fnmatchcase(path.rsplit(".", 1)[-1], pattern)


def _set_child(model: nn.Module, path: str, child: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, child)


def describe(module: nn.Module) -> str:
    if isinstance(module, LoRALayer):
        module = module.base
    kind = kind_of(module)
    return kind.describe_shape(module.weight.shape) if kind else type(module).__name__


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
    kinds = "nn.Linear (and subclasses), GPT-2's Conv1D, nn.Conv2d and nn.Embedding"
    for pattern in patterns:
        hits = {p: m for p, m in adaptable.items() if matches(p, pattern)}
        if not hits:
            others = [p for p, _ in model.named_modules() if p and matches(p, pattern)]
            if others:
                names = ", ".join(f"{p} ({describe(model.get_submodule(p))})" for p in others[:4])
                raise TargetNotFoundError(
                    f"target pattern {pattern!r} matched no module lorakit can adapt, only: "
                    f"{names}. lorakit adapts {kinds}; point the pattern at those layers "
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


@dataclass
class _Named:
    """What the handle keeps per adapter besides its variants: config and saved modules."""
    config: LoRAConfig
    saved: dict[str, nn.Module]


ActiveSpec = str | Sequence[str] | Mapping[str, float] | None


class Adapters:
    """The handle of a model's adapters: add, list, activate, route, save, merge, delete."""

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
        first = not self.named
        if first:
            self.model.requires_grad_(False)
        shared: dict[str, nn.Module] = {}
        for path, module in targets.items():
            layer = module if isinstance(module, LoRALayer) else self._wrap(path, module)
            base_weight = layer.base.weight
            own = plan.get(path, config)
            key = cls.shared_key(layer.kind, path, own)
            if key is not None and key not in shared:
                shared[key] = cls.make_shared(layer.kind, own, adapter_dtype(base_weight),
                                              base_weight.device, key)
            variant = cls(layer.kind, own, adapter_dtype(base_weight), base_weight.device,
                          shared.get(key) if key is not None else None)
            variant.init_from_weight(layer.kind.to_matrix(base_weight.detach()))
            layer.variants[name] = variant.train(layer.base.training)
        order = {p: i for i, p in enumerate(adaptable_modules(self.model))}
        self.layers = dict(sorted(self.layers.items(), key=lambda kv: order[kv[0]]))
        for module in saved.values():
            module.requires_grad_(True)
        self.named[name] = _Named(config, saved)
        if first:
            self.set_active(name)
        return self

    def _wrap(self, path: str, module: nn.Module) -> LoRALayer:
        layer = LoRALayer(module, kind_of(module)(module))
        layer.train(module.training)
        _set_child(self.model, path, layer)
        self.layers[path] = layer
        return layer

    def delete(self, name: str) -> None:
        """Remove adapter `name`; layers left without adapters get their base module back."""
        name = self._one(name)
        self.unmerge(name)
        for path, layer in list(self.layers.items()):
            if name in layer.variants:
                del layer.variants[name]
                layer.active.pop(name, None)
                if not len(layer.variants):
                    _set_child(self.model, path, layer.base)
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

    def detach(self, merge: bool = False) -> nn.Module:
        """Remove every adapter (folding the active ones into the base weights if `merge`)."""
        if merge:
            self.merge()
        for layer in self.layers.values():
            if not merge:
                for name in list(layer.merged):
                    layer.unmerge(name)
        for path, layer in self.layers.items():
            _set_child(self.model, path, layer.base)
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
        index = self._route_index(ids, names)
        if self.merged:
            raise LoraKitError("unmerge() before a routed forward: merged adapters would act "
                               "on every row")
        build = not torch.is_grad_enabled()
        try:
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
                layer.routing = (index.to(layer.base.weight.device), names, stacks)
            yield self.model
        finally:
            for layer in self.layers.values():
                layer.routing = None

    @staticmethod
    def _route_index(ids, names: list[str]) -> torch.Tensor:
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

    # --- what is trainable --------------------------------------------------------------
    def named_parameters(self, name: str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Adapter `name`'s tensors under the keys they have in its file: the trained ones and
        those its method keeps fixed (FFA-LoRA's A), which `parameters` leaves out."""
        name = self._one(name)
        variants = self.variants(name)
        seen: set[str] = set()
        for variant in variants.values():
            for key, p in variant.shared_tensors().items():
                if key not in seen:
                    seen.add(key)
                    yield key, p
        for path, variant in variants.items():
            for n, p in variant.own_tensors().items():
                yield f"{path}.{n}", p
        for path, module in self.named[name].saved.items():
            for n, p in module.named_parameters():
                yield f"{path}.{n}", p

    def parameters(self, name: str | None = None) -> Iterator[nn.Parameter]:
        """One adapter's trained tensors, or every adapter's when `name` is None."""
        names = self.names if name is None else [self._one(name)]
        seen: set[int] = set()
        for n in names:
            for _, p in self.named_parameters(n):
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Every adapter's parameters by kind ('lora', 'lambda', 'full'), for the optimizer."""
        groups: dict[str, list[nn.Parameter]] = {}
        seen: set[int] = set()

        def put(kind: str, p: nn.Parameter) -> None:
            if p.requires_grad and id(p) not in seen:   # a method's fixed tensors stay out
                seen.add(id(p))
                groups.setdefault(kind, []).append(p)
        for name, named in self.named.items():
            for variant in self.variants(name).values():
                for p in variant.shared_tensors().values():
                    put("lora", p)
                for n, p in variant.own_tensors().items():
                    put(variant.param_kinds.get(n, "lora"), p)
            for module in named.saved.values():
                for p in module.parameters():
                    put("full", p)
        return groups

    def trainable_count(self, name: str | None = None) -> int:
        return sum(p.numel() for p in self.parameters(name))

    def total_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # --- state --------------------------------------------------------------------------
    def state_dict(self, name: str | None = None) -> dict[str, torch.Tensor]:
        name = self._one(name)
        state = {k: p.detach() for k, p in self.named_parameters(name)}
        for path, module in self.named[name].saved.items():
            for n, b in module.named_buffers():
                state[f"{path}.{n}"] = b.detach()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict",
                        name: str | None = None) -> None:
        """Copy tensors in; a variant first fits itself to the file's shapes (a pruned rank)."""
        name = self._one(name)
        by_method: dict[type, list[Variant]] = {}
        for variant in self.variants(name).values():
            by_method.setdefault(type(variant), []).append(variant)
        for cls, members in by_method.items():
            cls.fit_to_state(members, state)
        own = self.state_dict(name)
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise AdapterMismatchError(
                f"{source} does not fit these adapters: "
                + (f"missing {missing[:3]}" if missing else "")
                + (" and " if missing and unexpected else "")
                + (f"unexpected {unexpected[:3]}" if unexpected else ""))
        for key, target in own.items():
            value = state[key]
            if value.shape != target.shape:
                raise AdapterMismatchError(
                    f"{source}: tensor {key!r} has shape {tuple(value.shape)}, "
                    f"the model needs {tuple(target.shape)} (another rank or base model?)")
            target.copy_(value.to(target.dtype))

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

    def save(self, path, metadata: dict | None = None, name: str | None = None):
        return save_adapter(self, path, metadata, name=name)

    # --- merging ------------------------------------------------------------------------
    @property
    def merged(self) -> bool:
        return any(layer.merged for layer in self.layers.values())

    def merge(self, name: str | None = None) -> None:
        """Fold adapter `name` (default: every active one) into the base weights, with its
        active weight: inference at the base model's cost."""
        names = list(self._active) if name is None else [self._one(name)]
        for n in names:
            if n not in self._active:
                raise LoraKitError(f"adapter {n!r} is not active; set_active it before merging")
            for layer in self.layers.values():
                if n in layer.variants:
                    layer.merge(n, self._active[n])

    def unmerge(self, name: str | None = None) -> None:
        names = self.names if name is None else [self._one(name)]
        for layer in self.layers.values():
            for n in names:
                layer.unmerge(n)

    # --- method-specific terms and training hooks, through the protocol -----------------
    def l1_penalty(self) -> torch.Tensor:
        """The methods' own loss terms summed over every module (S2-LoRA: Σ|λ|; zero for
        plain LoRA), to add to the loss."""
        terms = [t for layer in self.layers.values() for v in layer.variants.values()
                 if (t := v.penalty()) is not None]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    @torch.no_grad()
    def shrink(self, threshold, name: str | None = None) -> None:
        """The proximal step of `l1_penalty`, to call after each optimizer step: every
        penalised tensor moves towards zero by `threshold` and stops at zero (S2-LoRA:
        λ ← sign(λ)·max(|λ| − τ, 0)). `threshold`: a number, or a function of the tensor
        giving per-entry thresholds (`lorakit.training.proximal.adam_thresholds`, the step in Adam's
        metric). Leaves exact zeros, where the penalty added to the loss leaves λ jittering
        around zero under Adam (see `lorakit.training.proximal`)."""
        fn = threshold if callable(threshold) else (lambda _p: threshold)
        for variant in self.variants(name).values():
            variant.shrink(fn)

    def routing_terms(self) -> dict[str, torch.Tensor]:
        """The active adapters' auxiliary losses of the last forward (a mixture's load
        balance, LoRAMoE's localized balancing), each the mean over the adapter's modules,
        as `{"<adapter>/<term>": value}`; weighted already, to add to the loss."""
        terms: dict[str, torch.Tensor] = {}
        for name in self._active:
            per_term: dict[str, list[torch.Tensor]] = {}
            for variant in self.variants(name).values():
                for term, value in variant.aux_losses().items():
                    per_term.setdefault(term, []).append(value)
            for term, values in per_term.items():
                terms[f"{name}/{term}"] = torch.stack(values).mean()
        return terms

    def routing_loss(self) -> torch.Tensor:
        """The sum of `routing_terms()` (zero without mixtures), to add to the task loss."""
        terms = self.routing_terms()
        return torch.stack(list(terms.values())).sum() if terms else torch.zeros(())

    def routing_stats(self, name: str | None = None) -> dict[str, dict]:
        """Module path -> what its router did (experts, top_k, per-expert `load` and router
        `entropy` of the last forward, `train_load` / `train_entropy` over training)."""
        return {p: stats for p, v in self.variants(name).items()
                if (stats := v.routing_stats())}

    @contextlib.contextmanager
    def row_types(self, types):
        """Each batch row's data type inside the block (LoRAMoE: 1 new-task data, 0
        world-knowledge data), for the methods whose losses read it."""
        types = None if types is None else torch.as_tensor(types)
        for layer in self.layers.values():
            for variant in layer.variants.values():
                variant.set_row_types(types)
        try:
            yield self.model
        finally:
            for layer in self.layers.values():
                for variant in layer.variants.values():
                    variant.set_row_types(None)

    def before_optimizer_step(self) -> None:
        """Let every method change its gradients before the optimizer step (ALLoRA's per-row
        scaling). Call it between `backward()` and `optimizer.step()`; `AdapterModule` does,
        from Lightning's `on_before_optimizer_step`."""
        for layer in self.layers.values():
            for variant in layer.variants.values():
                variant.before_optimizer_step()

    @property
    def perturbs(self) -> bool:
        """Whether an active adapter's method trains with a perturbed second pass (GGPO)."""
        return any(type(layer.variants[n]).perturbs for layer in self.layers.values()
                   for n in layer.active if n in layer.variants)

    def perturb(self) -> int:
        """Perturb the active adapters for a second forward/backward, from the gradients the
        first left (LoRA-GGPO); returns how many modules were perturbed. `restore()` undoes it."""
        if self.merged:
            raise LoraKitError("unmerge() before perturb(): a merged adapter is in the weights")
        count = 0
        for layer in self.layers.values():
            for name in layer.active:
                if name in layer.variants:
                    count += bool(layer.variants[name].perturb(layer.base.weight, layer.kind))
        return count

    def restore(self) -> None:
        for layer in self.layers.values():
            for variant in layer.variants.values():
                variant.restore()

    @contextlib.contextmanager
    def perturbed(self):
        """`perturb()` inside the block, `restore()` after it, even on an error."""
        try:
            yield self.perturb()
        finally:
            self.restore()

    @property
    def output_regularised(self) -> bool:
        """Whether an active adapter's method has loss terms on the outputs (BA-LoRA)."""
        return any(variant_named(self.named[n].config.method).output_regularised
                   for n in self._active)

    def regularisers(self, outputs: torch.Tensor, base_outputs: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The active adapters' weighted loss terms on the model's outputs, as
        `{"<adapter>/<term>": value}` (BA-LoRA: consistency, diversity, svd).

        `base_outputs`: the same inputs through the frozen base (`with adapters.disabled():`);
        `mask` picks the rows that count (real tokens, not padding) from both.
        """
        # token outputs (batch × tokens × vocab): some terms are per sequence
        sequences = outputs.shape[0] if outputs.dim() > 2 else None
        if mask is not None:
            outputs = outputs[mask]
            base_outputs = base_outputs[mask] if base_outputs is not None else None
        terms: dict[str, torch.Tensor] = {}
        for name in self._active:
            config = self.named[name].config
            for term, value in variant_named(config.method).output_terms(
                    config, outputs, base_outputs, sequences=sequences).items():
                terms[f"{name}/{term}"] = value
        return terms

    def regulariser_loss(self, outputs: torch.Tensor, base_outputs: torch.Tensor | None = None,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
        """The sum of `regularisers(...)`, to add to the task loss (zero without any)."""
        terms = self.regularisers(outputs, base_outputs, mask)
        return torch.stack(list(terms.values())).sum() if terms else outputs.new_zeros(())

    def sparsity_report(self, tol: float = 1e-3, name: str | None = None) -> list[dict]:
        """Per module: rank, ranks in use (|λ| > tol), the fraction switched off, and the
        ranks that are exactly zero."""
        rows = []
        for path, v in self.variants(name).items():
            active = v.active_rank(tol)
            rows.append({"module": path, "rank": v.rank, "active": active,
                         "sparsity": 1.0 - active / max(v.rank, 1),
                         "exact_zeros": v.rank - v.active_rank(0.0)})
        return rows

    @torch.no_grad()
    def prune(self, tol: float = 1e-3, name: str | None = None) -> dict[str, int]:
        """Drop the ranks a method can drop (S2-LoRA: |λ| ≤ tol in every matrix sharing a
        basis); returns the new rank per group."""
        if self.merged:
            raise LoraKitError("unmerge() before prune(): the merged weights hold the old ranks")
        by_method: dict[type, list[Variant]] = {}
        for v in self.variants(name).values():
            by_method.setdefault(type(v), []).append(v)
        out: dict[str, int] = {}
        for cls, members in by_method.items():
            out.update(cls.prune(members, tol))
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}: {a.config.method} r={a.config.rank}"
                          for n, a in self.named.items())
        return (f"Adapters({inner}; active={self._active}, layers={len(self.layers)}, "
                f"trainable={self.trainable_count():,}, total={self.total_count():,})")


def attach(model: nn.Module, config: LoRAConfig, name: str = DEFAULT) -> Adapters:
    """Add adapter `name` to the modules matching `config.targets`, freeze the base.

    The first adapter of a model is active; later ones are added inactive, as in PEFT
    (`set_active` chooses). Returns the model's one handle.
    """
    handle = _HANDLES.get(model)
    if handle is None:
        if any(isinstance(m, LoRALayer) for m in model.modules()):
            raise LoraKitError(f"{type(model).__name__} carries lorakit adapters attached to "
                               "another module (its parent or a copy); attach to that one")
        handle = Adapters(model)
        try:
            handle.add(config, name)
        except Exception:
            handle.detach()
            raise
        _HANDLES[model] = handle
        return handle
    return handle.add(config, name)


def adapters_of(model: nn.Module) -> Adapters | None:
    """The handle of a model's adapters, or None if it carries none."""
    return _HANDLES.get(model)


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


def load_adapter(model: nn.Module, path, name: str = DEFAULT) -> Adapters:
    """Attach the adapter a file describes to `model` as `name` and load its weights.

    Refuses (AdapterMismatchError) a file made for another base, naming the first
    module that differs; a refused load leaves the model as it was.
    """
    meta, tensors = read_adapter(path)
    check_fingerprint(model, meta["fingerprint"], meta["kinds"], source=f"adapter {path}")
    adapters = attach(model, LoRAConfig.from_dict(meta["config"]), name)
    try:
        if set(adapters.fingerprint(name)) != set(meta["fingerprint"]):
            extra = sorted(set(adapters.fingerprint(name)) - set(meta["fingerprint"]))
            raise AdapterMismatchError(
                f"adapter {path}: its target patterns match more modules in this model than "
                f"in the base it was made for (e.g. {extra[:3]}); load it onto the model it "
                "was trained on")
        adapters.load_state_dict(tensors, source=f"adapter {path}", name=name)
    except Exception:
        adapters.delete(name)
        raise
    return adapters
