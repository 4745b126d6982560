"""What is trainable and what is saved: an adapter's tensors under their file keys.

Which tensors are adapters is never guessed from parameter names: each variant lists
its own tensors and those it shares (torchtune's `adapter_params()` idea).
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ..errors import AdapterMismatchError
from ..variants import Variant


class StateMixin:
    """`Adapters`' parameters, optimizer groups, counts and state dicts."""

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
