r"""How important each head and MLP channel is: three criteria, one aggregation.

Every criterion gives an importance per weight element of the unit's modules, summed
over the unit's rows or columns (`structure.py`), normalised per module, and added over
the modules (a head's q/o and k/v, a channel's gate/up/down):

    criterion   per element                                 needs
    magnitude   W²  (the unit's squared L2 norm)            the weights only
    taylor      |W ⊙ ∂L/∂W|                                 the base weights' own gradients
    loraprune   |(W + s·BA) ⊙ (∇B·A + B·∇A − ∇B·∇A)|        LoRA's weights and gradients only

W is the module's effective weight: the base weight plus the active adapters' s·BA when
it carries any (the weight that pruning removes rows and columns from).

- **taylor** is LLM-Pruner's element-wise first-order criterion (Ma et al. 2023,
  "LLM-Pruner: On the Structural Pruning of Large Language Models", sec. 3.2): the loss
  change of zeroing a weight, ≈ |W ∂L/∂W|, summed over the group. It needs ∂L/∂W for
  every prunable base weight, a full-size gradient buffer per weight: the memory that
  LoRA was meant to save.
- **loraprune** is LoRAPrune's LoRA-guided criterion (Zhang et al. 2024, "LoRAPrune:
  Structured Pruning Meets Low-Rank Parameter-Efficient Fine-Tuning", sec. 3.2): with
  W' = W + BA, one gradient step on B and A moves BA by
  (B − ∇B)(A − ∇A) − BA = −(∇B·A + B·∇A − ∇B·∇A), which stands in for the full
  weight's gradient ∂L/∂W, so the Taylor importance of W' needs only the r × in and
  out × r gradients that LoRA training computes anyway; the base weights keep
  `requires_grad = False` and never get a `.grad`. The unit scores are smoothed over
  steps with the paper's moving average (sec. 3.2, "Ī⁽ᵗ⁾ = λ Ī⁽ᵗ⁻¹⁾ + (1 − λ) Î⁽ᵗ⁾",
  λ = 0.9 in the authors' code, `beta` here), and each module's unit scores are
  divided by their L2 norm before they are added over the unit's modules, as the
  authors' code does (`compute_sensitivity(..., norm=True)`), so a wide module does not
  outvote a narrow one. The same smoothing and normalisation apply to every criterion
  here, so the three compare under one schedule.
- **magnitude** is the baseline that looks at no data.

    acc = ScoreAccumulator(model, "loraprune")   # after each backward:
    acc.update()                                 # reads the gradients, updates the average
    scores = acc.scores()                        # UnitScores for `prune`

`unit_scores(model, criterion, batches=...)` runs those steps over a few batches.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..errors import LoraKitError
from ..layers import LoRALayer
from .structure import Block, blocks, head_counts, linear

Criterion = Literal["magnitude", "taylor", "loraprune"]
CRITERIA = ("magnitude", "taylor", "loraprune")


@dataclass
class UnitScores:
    """Importance per unit, by block index: per query head (its q rows and o columns), per KV
    head (its k and v rows) and per MLP channel. Higher is more important."""

    criterion: str
    heads: dict[int, torch.Tensor] = field(default_factory=dict)
    kv_heads: dict[int, torch.Tensor] = field(default_factory=dict)
    channels: dict[int, torch.Tensor] = field(default_factory=dict)

    def select(self, report) -> UnitScores:
        """These scores for the model `report` (a `PruneReport`) left: the kept units' rows."""
        def take(table: dict[int, torch.Tensor], kept: dict[int, list[int]]):
            return {i: t[torch.tensor(kept[i])] if i in kept else t for i, t in table.items()}
        return UnitScores(self.criterion, take(self.heads, report.kept_heads),
                          take(self.kv_heads, report.kept_kv_heads),
                          take(self.channels, report.kept_channels))


def _by_unit(e: torch.Tensor, dim: int, units: int) -> torch.Tensor:
    """Sum an (out × in) importance over the other dimension, then over each unit's slice of
    `dim` (a head's head_dim rows, or one channel)."""
    per = e.sum(dim=1 - dim)
    return per.reshape(units, -1).sum(1)


class ScoreAccumulator:
    """One criterion's unit scores on `model`, updated after each backward.

    Args:
        model: the model to score (with lorakit adapters for "loraprune").
        criterion: "magnitude", "taylor" or "loraprune".
        beta: the moving average's λ (LoRAPrune sec. 3.2; 0.9); 0 keeps the last step only.
        normalize: divide each module's unit scores by their L2 norm before adding modules.
        adapter: the adapter whose factors "loraprune" reads (default: the active one).
    """

    def __init__(self, model: nn.Module, criterion: Criterion = "loraprune", beta: float = 0.9,
                 normalize: bool = True, adapter: str | None = None) -> None:
        if criterion not in CRITERIA:
            raise LoraKitError(f"importance criterion must be one of {list(CRITERIA)}, got "
                               f"{criterion!r}")
        if not 0.0 <= beta < 1.0:
            raise LoraKitError(f"ScoreAccumulator: beta must be in [0, 1), got {beta!r}")
        self.model, self.criterion, self.beta, self.normalize = model, criterion, beta, normalize
        self.adapter = adapter
        self.blocks = blocks(model)
        self.steps = 0
        self.table: UnitScores | None = None
        self._grad_before: dict[int, bool] = {}
        if criterion == "taylor":
            self.enable_base_gradients()
        if criterion == "loraprune":
            self._check_adapters()

    # --- what each criterion needs --------------------------------------------------------
    def _modules(self, block: Block) -> tuple[str, ...]:
        return (*block.head_modules, *block.mlp_in, block.mlp_out)

    def enable_base_gradients(self) -> None:
        """"taylor": the prunable base weights get gradients (and the memory for them)."""
        for block in self.blocks:
            for path in self._modules(block):
                w = linear(self.model, path).weight
                self._grad_before.setdefault(id(w), w.requires_grad)
                w.requires_grad_(True)

    def close(self) -> None:
        """Give the base weights back their `requires_grad` and drop their gradients."""
        for block in self.blocks:
            for path in self._modules(block):
                w = linear(self.model, path).weight
                if id(w) in self._grad_before:
                    w.requires_grad_(self._grad_before[id(w)])
                    w.grad = None
        self._grad_before = {}

    def _adapter_name(self, layer: LoRALayer) -> str | None:
        if self.adapter is not None:
            return self.adapter if self.adapter in layer.variants else None
        active = [n for n in layer.active if n in layer.variants]
        if len(active) > 1:
            raise LoraKitError(f"loraprune: adapters {active} are active on one module; name "
                               "the one to read with adapter=")
        return active[0] if active else None

    def _check_adapters(self) -> None:
        for block in self.blocks:
            if not any(isinstance(self.model.get_submodule(p), LoRALayer)
                       and self._adapter_name(self.model.get_submodule(p)) is not None
                       for p in self._modules(block)):
                raise LoraKitError(
                    f"loraprune: block {block.index} ({block.path!r}) carries no active lorakit "
                    "adapter; attach LoRA to its attention and MLP projections (targets "
                    "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj) first")

    # --- per element ----------------------------------------------------------------------
    def _element(self, path: str) -> torch.Tensor | None:
        """The (out × in) importance of one module's weight elements, or None (no signal)."""
        module = self.model.get_submodule(path)
        lin = linear(self.model, path)
        base = lin.weight.detach()
        w = base.float()
        variant = None
        if isinstance(module, LoRALayer) and module.enabled:
            for name, weight in module.active.items():
                if name in module.variants and name not in module.merged:
                    delta = module.variants[name].delta_weight(module.kind.to_matrix(base))
                    w = w + delta.detach().float() * weight
            name = self._adapter_name(module)
            variant = module.variants[name] if name is not None else None
        if self.criterion == "magnitude":
            return w * w
        if self.criterion == "taylor":
            g = lin.weight.grad
            return None if g is None else (w * g.float()).abs()
        if variant is None:
            return None
        a, b = variant.factors()
        if a.grad is None or b.grad is None:
            return None
        ga, gb, a, b = a.grad.float(), b.grad.float(), a.detach().float(), b.detach().float()
        estimate = gb @ a + b @ ga - gb @ ga        # LoRAPrune sec. 3.2
        return (w * estimate).abs()

    # --- per unit -------------------------------------------------------------------------
    @torch.no_grad()
    def current(self) -> UnitScores:
        """The unit scores of this step alone (no average)."""
        out = UnitScores(self.criterion)
        for block in self.blocks:
            n_heads, n_kv, _ = head_counts(self.model, block)
            channels = linear(self.model, block.mlp_out).in_features
            parts = ((out.heads, n_heads, ((block.q, 0), (block.o, 1))),
                     (out.kv_heads, n_kv, ((block.k, 0), (block.v, 0))),
                     (out.channels, channels, (*((p, 0) for p in block.mlp_in),
                                               (block.mlp_out, 1))))
            for table, units, modules in parts:
                total = torch.zeros(units)
                for path, dim in modules:
                    e = self._element(path)
                    if e is None:
                        continue
                    s = _by_unit(e, dim, units).cpu()
                    total += s / (s.norm() + 1e-8) if self.normalize else s
                table[block.index] = total
        return out

    @torch.no_grad()
    def update(self) -> UnitScores:
        """Read this step's gradients (call it after backward, before the optimizer zeroes
        them) and fold the step into the moving average; "taylor" drops the base gradients
        it read, which no optimizer would zero."""
        now = self.current()
        if self.table is None:
            self.table = now
        else:
            for name in ("heads", "kv_heads", "channels"):
                old, new = getattr(self.table, name), getattr(now, name)
                for i, t in new.items():
                    old[i] = self.beta * old[i] + (1.0 - self.beta) * t if i in old else t
        if self.criterion == "taylor":
            for block in self.blocks:
                for path in self._modules(block):
                    linear(self.model, path).weight.grad = None
        self.steps += 1
        return self.table

    def scores(self) -> UnitScores:
        """The averaged unit scores (magnitude needs no step: its weights are read now)."""
        if self.table is None:
            if self.criterion != "magnitude":
                raise LoraKitError(f"{self.criterion}: no gradients were read yet; call "
                                   "update() after a backward pass")
            return self.current()
        return self.table

    def pruned(self, report) -> None:
        """The model was pruned (`report`): keep the kept units' averages, re-find blocks."""
        if self.table is not None:
            self.table = self.table.select(report)
        self.blocks = blocks(self.model)


def default_loss(model: nn.Module, batch) -> torch.Tensor:
    """A transformers model's own loss: `model(**batch).loss` (give labels in the batch)."""
    out = model(**batch) if isinstance(batch, dict) else model(batch)
    loss = getattr(out, "loss", None)
    if loss is None:
        raise LoraKitError("unit_scores: the model returned no loss for a batch; put labels in "
                           "the batch or pass loss_fn=(model, batch) -> loss")
    return loss


def unit_scores(model: nn.Module, criterion: Criterion = "magnitude",
                batches: Iterable | None = None,
                loss_fn: Callable[[nn.Module, object], torch.Tensor] | None = None,
                beta: float = 0.9, normalize: bool = True,
                adapter: str | None = None) -> UnitScores:
    """Importance of every head and channel of `model` under `criterion`.

    "magnitude" reads the weights; "taylor" and "loraprune" run forward and backward on each
    of `batches` (`loss_fn(model, batch)`, default `model(**batch).loss`) and average the
    steps (LoRAPrune's moving average, `beta`). Gradients it made are dropped at the end.
    """
    acc = ScoreAccumulator(model, criterion, beta, normalize, adapter)
    try:
        if criterion == "magnitude":
            return acc.scores()
        if batches is None:
            raise LoraKitError(f"unit_scores: criterion {criterion!r} needs batches (it reads "
                               "gradients)")
        loss_fn = loss_fn or default_loss
        params = [p for p in model.parameters() if p.requires_grad]
        for batch in batches:
            for p in params:
                p.grad = None
            loss_fn(model, batch).backward()
            acc.update()
        for p in params:
            p.grad = None
        return acc.scores()
    finally:
        acc.close()
