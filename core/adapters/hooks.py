"""Method-specific training terms and hooks, through the variant protocol.

The handle never asks which method an adapter is: every step here loops over the
variants and calls the protocol's verbs (a method without the verb does nothing).

One channel for a method's extra losses: `loss_terms(...)` returns every active
method's named terms, `{"<adapter>/<term>": value}`, weighted already:

    <adapter>/l1             S2-LoRA's l1 · Σ|λ|, when a coefficient `l1` is given
    <adapter>/balance, /lbc  a mixture's load balance of the last forward
    <adapter>/consistency …  BA-LoRA's terms on the outputs, when `outputs` are given

`AdapterModule` (lorakit.training.module) adds and logs them after every training step,
so a plugin's `training_step` cannot forget one.
"""
from __future__ import annotations

import contextlib

import torch

from ..errors import LoraKitError
from ..variants import Variant, variant_named


class HooksMixin:
    """`Adapters`' loss terms, optimizer-step hooks, perturbation and pruning."""

    def l1_penalty(self) -> torch.Tensor:
        """The methods' own loss terms summed over every module (S2-LoRA: Σ|λ|; zero for
        plain LoRA), to add to the loss."""
        terms = [t for layer in self.layers.values() for v in layer.variants.values()
                 if (t := v.penalty()) is not None]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def loss_terms(self, outputs: torch.Tensor | None = None,
                   base_outputs: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                   l1: float = 0.0) -> dict[str, torch.Tensor]:
        """Every active method's extra losses as `{"<adapter>/<term>": value}`, to add to the
        task loss: S2-LoRA's `l1 · Σ|λ|` over the adapter's modules (only when `l1` is not 0:
        a run that applies the L1 as a proximal step, `shrink`, adds nothing to the loss), a
        mixture's `routing_terms()` of the last forward, and, when `outputs` are given, the
        `regularisers(outputs, base_outputs, mask)` (BA-LoRA). `output_regularised` says whether
        an active method has terms on the outputs."""
        terms: dict[str, torch.Tensor] = {}
        if l1:
            for name in self._active:
                penalties = [t for v in self.variants(name).values()
                             if (t := v.penalty()) is not None]
                if penalties:
                    terms[f"{name}/l1"] = l1 * torch.stack(penalties).sum()
        terms.update(self.routing_terms())
        if outputs is not None:
            terms.update(self.regularisers(outputs, base_outputs, mask))
        return terms

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
                # only a method that perturbs reads the weight (a quantized one dequantizes)
                if name in layer.variants and type(layer.variants[name]).perturbs:
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
