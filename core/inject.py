"""`attach`: put adapters into any `nn.Module`, and the `Adapters` handle that manages them.

The model is changed from the outside only: each matched `nn.Linear` (or subclass)
is replaced in its parent by a layer that holds it as `.base`; `detach()` puts the
original modules back. Which parameters are adapters is never guessed from names:
the handle knows its layers (torchtune's `adapter_params()` idea).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from fnmatch import fnmatchcase

import torch
from torch import nn

from .config import LoRAConfig
from .errors import AdapterMismatchError, LoraKitError, TargetNotFoundError
from .layers import LoRALayer, LoRALinear, S2LoRALinear, SharedBasis, adapter_dtype


def matches(path: str, pattern: str) -> bool:
    """Glob on the module path; a pattern without a dot also matches the last component."""
    if fnmatchcase(path, pattern):
        return True
    return "." not in pattern and fnmatchcase(path.rsplit(".", 1)[-1], pattern)


def _set_child(model: nn.Module, path: str, child: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, child)


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"Linear(in={module.in_features}, out={module.out_features})"
    return type(module).__name__


def find_targets(model: nn.Module, patterns: list[str]) -> dict[str, nn.Linear]:
    """The `nn.Linear` modules whose paths match any pattern, or a clear error."""
    linears = {p: m for p, m in model.named_modules() if isinstance(m, nn.Linear)}
    found: dict[str, nn.Linear] = {}
    for pattern in patterns:
        hits = {p: m for p, m in linears.items() if matches(p, pattern)}
        if not hits:
            others = [p for p, _ in model.named_modules() if p and matches(p, pattern)]
            if others:
                kinds = ", ".join(f"{p} ({_describe(model.get_submodule(p))})" for p in others[:4])
                raise TargetNotFoundError(
                    f"target pattern {pattern!r} matched no nn.Linear, only: {kinds}. "
                    "lorakit adapts nn.Linear modules (and subclasses); point the pattern "
                    "at the Linear layers inside them.")
            examples = ", ".join(list(linears)[:8]) or "(the model has no nn.Linear)"
            raise TargetNotFoundError(
                f"target pattern {pattern!r} matched no module of {type(model).__name__}. "
                f"Linear modules that do exist: {examples}"
                + (" ..." if len(linears) > 8 else ""))
        found.update(hits)
    order = {p: i for i, p in enumerate(linears)}
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
    outer = {p: m for p, m in found.items()
             if not any(p.startswith(q + ".") for q in found if q != p)}
    return outer


class Adapters:
    """The handle `attach` returns: list, save, load, merge, disable and detach adapters."""

    def __init__(self, model: nn.Module, config: LoRAConfig, layers: dict[str, LoRALayer],
                 saved: dict[str, nn.Module], requires_grad_before: dict[int, bool]) -> None:
        self.model = model
        self.config = config
        self.layers = layers
        self.saved = saved
        self._requires_grad_before = requires_grad_before

    # --- what is an adapter -------------------------------------------------------
    @property
    def bases(self) -> dict[str, SharedBasis]:
        """The shared A/B of S2-LoRA, keyed 'shared.<in>x<out>'."""
        out: dict[str, SharedBasis] = {}
        for layer in self.layers.values():
            if isinstance(layer, S2LoRALinear):
                out[f"shared.{layer.in_features}x{layer.out_features}"] = layer.basis
        return out

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Every trainable tensor under the key it has in the adapter file."""
        for key, basis in self.bases.items():
            yield f"{key}.lora_A", basis.lora_A
            yield f"{key}.lora_B", basis.lora_B
        for path, layer in self.layers.items():
            if isinstance(layer, LoRALinear):
                yield f"{path}.lora_A", layer.lora_A
                yield f"{path}.lora_B", layer.lora_B
            else:
                yield f"{path}.lora_lambda", layer.lora_lambda
        for path, module in self.saved.items():
            for name, p in module.named_parameters():
                yield f"{path}.{name}", p

    def parameters(self) -> Iterator[nn.Parameter]:
        for _, p in self.named_parameters():
            yield p

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by kind, for optimizers that treat them differently."""
        groups: dict[str, list[nn.Parameter]] = {"lora": [], "lambda": [], "full": []}
        for key, p in self.named_parameters():
            kind = ("lambda" if key.endswith(".lora_lambda")
                    else "lora" if key.endswith((".lora_A", ".lora_B")) else "full")
            groups[kind].append(p)
        return {k: v for k, v in groups.items() if v}

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def total_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # --- state --------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {k: p.detach() for k, p in self.named_parameters()}
        for path, module in self.saved.items():
            for name, b in module.named_buffers():
                state[f"{path}.{name}"] = b.detach()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Copy tensors in; S2-LoRA bases shrink to a pruned file's rank first."""
        for key, basis in self.bases.items():
            a = state.get(f"{key}.lora_A")
            if a is not None and a.shape[0] != basis.rank:
                self._resize(key, a.shape[0])
        own = self.state_dict()
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

    def _resize(self, key: str, rank: int) -> None:
        for layer in self.layers.values():
            if isinstance(layer, S2LoRALinear) and \
                    f"shared.{layer.in_features}x{layer.out_features}" == key:
                basis = layer.basis
                break
        basis.lora_A = nn.Parameter(basis.lora_A.data[:rank].clone())
        basis.lora_B = nn.Parameter(basis.lora_B.data[:, :rank].clone())
        for layer in self.layers.values():
            if isinstance(layer, S2LoRALinear) and layer.basis is basis:
                layer.lora_lambda = nn.Parameter(layer.lora_lambda.data[:rank].clone())

    def fingerprint(self) -> dict[str, list[int]]:
        """Names and shapes of the adapted weights: what an adapter file is checked against."""
        fp = {p: [layer.out_features, layer.in_features] for p, layer in self.layers.items()}
        for path, module in self.saved.items():
            for name, p in module.named_parameters():
                fp[f"{path}.{name}"] = list(p.shape)
        return fp

    def save(self, path, metadata: dict | None = None) -> None:
        from .adapter_file import save_adapter
        save_adapter(self, path, metadata)

    # --- merge, switch, detach ----------------------------------------------------
    @property
    def merged(self) -> bool:
        return any(layer.merged for layer in self.layers.values())

    def merge(self) -> None:
        """Fold ΔW into the base weights: inference at the base model's cost."""
        for layer in self.layers.values():
            layer.merge()

    def unmerge(self) -> None:
        for layer in self.layers.values():
            layer.unmerge()

    def set_enabled(self, enabled: bool) -> None:
        if not enabled and self.merged:
            raise LoraKitError("adapters are merged into the base weights; unmerge() before "
                               "disabling them, or use `with adapters.disabled():`")
        for layer in self.layers.values():
            layer.enabled = enabled

    @contextlib.contextmanager
    def disabled(self):
        """The frozen base model inside the block, without copying it."""
        was_merged = self.merged
        if was_merged:
            self.unmerge()
        states = {p: layer.enabled for p, layer in self.layers.items()}
        self.set_enabled(False)
        try:
            yield self.model
        finally:
            for p, layer in self.layers.items():
                layer.enabled = states[p]
            if was_merged:
                self.merge()

    def detach(self, merge: bool = False) -> nn.Module:
        """Put the original modules back (with ΔW folded in if `merge`); returns the model."""
        if merge:
            self.merge()
        else:
            self.unmerge()
        for path, layer in self.layers.items():
            _set_child(self.model, path, layer.base)
        for p in self.model.parameters():
            p.requires_grad_(self._requires_grad_before.get(id(p), p.requires_grad))
        self.layers = {}
        self.saved = {}
        return self.model

    # --- S2-LoRA sparsity ---------------------------------------------------------
    def _s2_layers(self) -> dict[str, S2LoRALinear]:
        return {p: layer_ for p, layer_ in self.layers.items() if isinstance(layer_, S2LoRALinear)}

    def l1_penalty(self) -> torch.Tensor:
        """Σ|λ| over every S2-LoRA matrix (zero for plain LoRA), to add to the loss."""
        terms = [layer_.lora_lambda.abs().sum() for layer_ in self._s2_layers().values()]
        if not terms:
            return torch.zeros(())
        return torch.stack(terms).sum()

    def sparsity_report(self, tol: float = 1e-3) -> list[dict]:
        """Per matrix: rank, ranks in use (|λ| > tol) and the fraction switched off."""
        rows = []
        for path, layer in self.layers.items():
            if isinstance(layer, S2LoRALinear):
                lam = layer.lora_lambda.detach().abs()
                active = int((lam > tol).sum())
                rows.append({"module": path, "rank": layer.rank, "active": active,
                             "sparsity": 1.0 - active / layer.rank})
            else:
                rows.append({"module": path, "rank": layer.rank, "active": layer.rank,
                             "sparsity": 0.0})
        return rows

    @torch.no_grad()
    def prune(self, tol: float = 1e-3) -> dict[str, int]:
        """Drop the ranks whose λ is ≤ tol in every matrix sharing a basis; returns new ranks."""
        if self.merged:
            raise LoraKitError("unmerge() before prune(): the merged weights hold the old ranks")
        new_ranks = {}
        for key, basis in self.bases.items():
            users = [layer_ for layer_ in self._s2_layers().values() if layer_.basis is basis]
            lam = torch.stack([layer_.lora_lambda.abs() for layer_ in users])
            keep = (lam > tol).any(dim=0)
            for layer in users:
                layer.lora_lambda = nn.Parameter(layer.lora_lambda.data[keep].clone())
            basis.lora_A = nn.Parameter(basis.lora_A.data[keep].clone())
            basis.lora_B = nn.Parameter(basis.lora_B.data[:, keep].clone())
            new_ranks[key] = int(keep.sum())
        return new_ranks

    def __repr__(self) -> str:
        return (f"Adapters(method={self.config.method!r}, layers={len(self.layers)}, "
                f"trainable={self.trainable_count():,}, total={self.total_count():,})")


def attach(model: nn.Module, config: LoRAConfig) -> Adapters:
    """Wrap the `nn.Linear` modules matching `config.targets`, freeze everything else."""
    if any(isinstance(m, LoRALayer) for m in model.modules()):
        raise LoraKitError(f"{type(model).__name__} already carries lorakit adapters; "
                           "detach() them before attaching new ones")
    targets = find_targets(model, config.targets)
    saved = find_modules(model, config.modules_to_save) if config.modules_to_save else {}
    clash = [p for p in targets if any(p == s or p.startswith(s + ".") for s in saved)]
    if clash:
        raise LoraKitError(f"module {clash[0]!r} is both an adapter target and in "
                           "modules_to_save; choose one")
    requires_grad_before = {id(p): p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)

    layers: dict[str, LoRALayer] = {}
    bases: dict[tuple, SharedBasis] = {}
    for path, linear in targets.items():
        if config.method == "lora":
            layer: LoRALayer = LoRALinear(linear, config.rank, config.scale, config.dropout,
                                          config.init)
        else:
            shape = (linear.in_features, linear.out_features)
            if shape not in bases:
                bases[shape] = SharedBasis(*shape, config.rank, config.init,
                                           adapter_dtype(linear.weight), linear.weight.device)
            layer = S2LoRALinear(linear, bases[shape], config.scale, config.dropout)
        layer.train(linear.training)
        _set_child(model, path, layer)
        layers[path] = layer
    for module in saved.values():
        module.requires_grad_(True)
    return Adapters(model, config, layers, saved, requires_grad_before)


def adapters_of(model: nn.Module) -> list[str]:
    """Paths of the adapter layers inside a model (to find them without the handle)."""
    return [p for p, m in model.named_modules() if isinstance(m, LoRALayer)]


def check_fingerprint(model: nn.Module, fingerprint: dict[str, list[int]], source: str) -> None:
    """Raise `AdapterMismatchError` naming the first module that differs from the adapter's base."""
    for path, shape in fingerprint.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            module = None
        if isinstance(module, LoRALayer):
            module = module.base
        if isinstance(module, nn.Linear):
            here = [module.out_features, module.in_features]
            if here != list(shape):
                raise AdapterMismatchError(
                    f"{source} was made for another base model: module {path!r} is "
                    f"Linear(in={shape[1]}, out={shape[0]}) there but "
                    f"Linear(in={here[1]}, out={here[0]}) in this {type(model).__name__}. "
                    "Load it onto the model it was trained on.")
            continue
        if module is None:
            # a modules_to_save tensor: `<module>.<param>`
            try:
                tensor = model.get_parameter(path)
            except AttributeError:
                tensor = None
            if tensor is not None:
                if list(tensor.shape) != list(shape):
                    raise AdapterMismatchError(
                        f"{source} was made for another base model: parameter {path!r} has "
                        f"shape {list(shape)} there but {list(tensor.shape)} here.")
                continue
            raise AdapterMismatchError(
                f"{source} was made for another base model: it adapts module {path!r}, "
                f"which this {type(model).__name__} does not have. Load it onto the model it "
                "was trained on.")
        raise AdapterMismatchError(
            f"{source} was made for another base model: {path!r} is a Linear there but "
            f"{_describe(module)} here.")
