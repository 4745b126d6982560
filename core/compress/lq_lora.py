r"""LQ-LoRA (Guo et al., ICLR 2024, "LQ-LoRA: Low-rank plus Quantized Matrix Decomposition
for Efficient Language Model Finetuning"): W ≈ Q + L1 L2 per matrix, with the bits each
matrix gets chosen under one memory budget.

(a) The decomposition (sec. 3.1, Algorithm 1), Q_0 = 0:

    L1_t L2_t = SVD_r(W − Q_{t−1})
    Q_t       = quant(W − L1_t L2_t)              stop when ‖W − Q_t − L1_t L2_t‖ grows;
                                                  keep the best iterate

    with `quant` a lorakit `QuantizedLinear` (HQQ int2/3/4/8 or bitsandbytes nf4/fp4 at
    any group size): Q is frozen, only L1 L2 trains (it becomes a lorakit LoRA).

(b) The mixed configuration (sec. 3.2): for each matrix i and candidate c = (bits, group)
    the decomposition error e_ic and the true storage b_ic (QuantizedLinear.nbytes(): codes,
    scales, zero points) give an integer linear program, solved by scipy.optimize.milp:

        min Σ_ic e_ic x_ic   s.t.  Σ_c x_ic = 1 (one config per matrix),
                                   Σ_ic b_ic x_ic ≤ budget_bits · Σ_i numel_i,  x ∈ {0, 1}

    The low-rank part is the same for every candidate, so the budget counts Q only.

(c) Data-aware (sec. 3.3): with F the diagonal empirical Fisher of each weight (mean
    squared gradients over a few batches, `fisher_diagonal`), the error is Σ F ⊙ (W − Q −
    L1 L2)², and the SVD is Fisher-weighted under the paper's row/column approximation
    F ≈ r cᵀ / ΣF: L1 L2 = D_r^{-1/2} SVD_r(D_r^{1/2} M D_c^{1/2}) D_c^{-1/2}.

`lq_lora(model, targets, rank, budget_bits, candidates, fisher)` does all three and
returns the adapters with an `LQReport` (the config, error and bits of each matrix).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import Adapters
from ..errors import LoraKitError
from ..layers.quantized import QuantizedLinear, QuantSpec
from .quantized_start import (
    Decomposition,
    attach_low_rank,
    linear_targets,
    low_rank,
    quantized_weight_bits,
)

#: the candidate configs lq_lora tries by default: HQQ's integer codes at three group
#: sizes (the paper's grid of bits x block sizes, sec. 3.2, with lorakit's quantizers)
#: and bitsandbytes nf4
CANDIDATES = ("int2-g32", "int2-g64", "int2-g128", "int3-g32", "int3-g64", "int3-g128",
              "int4-g32", "int4-g64", "int4-g128", "int8-g64", "nf4-g64")


def _weighted_low_rank(m: torch.Tensor, rank: int, fisher: torch.Tensor | None):
    """SVD_r(m), or its Fisher-weighted form under F ≈ r cᵀ (sec. 3.3)."""
    if fisher is None:
        return low_rank(m, rank)
    f = fisher.float().clamp_min(0)
    rows, cols = f.sum(1), f.sum(0)
    rows = (rows / rows.mean()).clamp_min(1e-6).sqrt()
    cols = (cols / cols.mean()).clamp_min(1e-6).sqrt()
    l1, l2 = low_rank(rows[:, None] * m * cols[None, :], rank)
    return l1 / rows[:, None], l2 / cols[None, :]


def _error(residual: torch.Tensor, fisher: torch.Tensor | None) -> float:
    """Σ R² or Σ F ⊙ R²."""
    r2 = residual.float().pow(2)
    return float((r2 if fisher is None else fisher.float() * r2).sum())


@torch.no_grad()
def lq_decompose(weight: torch.Tensor, spec: QuantSpec | str, rank: int, iterations: int = 10,
                 fisher: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None) -> Decomposition:
    """Algorithm 1: the best Q + L1 L2 of up to `iterations` alternations from Q_0 = 0; its
    `error` is ‖W − Q − L1 L2‖_F / ‖W‖_F (Fisher-weighted, Σ F R² / Σ F W², with `fisher`)."""
    spec = QuantSpec.parse(spec)
    if iterations < 1 or rank < 1:
        raise LoraKitError(f"LQ-LoRA: iterations and rank must be >= 1, got {iterations} and "
                           f"{rank}")
    w = weight.detach().float()
    q = torch.zeros_like(w)
    best, best_error = None, float("inf")
    for t in range(1, iterations + 1):
        l1, l2 = _weighted_low_rank(w - q, rank, fisher)
        quantized = QuantizedLinear(w - l1 @ l2, bias, spec)
        q = quantized.dequantize()
        error = _error(w - q - l1 @ l2, fisher)
        if error >= best_error:
            break                        # the error grew: the paper's stopping rule
        best, best_error = (quantized, l1, l2, t), error
    quantized, l1, l2, t = best
    relative = (best_error / max(_error(w, fisher), 1e-30)) ** 0.5
    return Decomposition(quantized, l1, l2, relative, t)


def choose_configs(errors: dict[str, dict[str, float]], storage_bits: dict[str, dict[str, float]],
                   numel: dict[str, int], budget_bits: float) -> dict[str, str]:
    """The ILP of sec. 3.2: one config per matrix minimising Σ error under Σ storage bits ≤
    budget_bits · Σ numel; `errors[path][config]`, `storage_bits[path][config]`."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    pairs = [(p, c) for p in errors for c in errors[p]]
    cost = np.array([errors[p][c] for p, c in pairs], dtype=np.float64)
    cost = cost / max(cost.max(), 1e-30)            # well scaled for the solver
    bits = np.array([storage_bits[p][c] for p, c in pairs], dtype=np.float64)
    paths = list(errors)
    one = np.array([[1.0 if p == q else 0.0 for p, _ in pairs] for q in paths])
    total = budget_bits * sum(numel[p] for p in paths)
    least = sum(min(storage_bits[p].values()) for p in paths)
    if least > total + 1e-6:
        raise LoraKitError(f"LQ-LoRA: a budget of {budget_bits:g} bits per weight cannot be met; "
                           "the smallest candidates need "
                           f"{least / sum(numel.values()):.3f}: raise budget_bits or add "
                           "smaller candidates")
    result = milp(cost, integrality=np.ones(len(pairs)), bounds=Bounds(0, 1),
                  constraints=[LinearConstraint(one, 1, 1),
                               LinearConstraint(bits[None, :], -np.inf, total)])
    if not result.success:
        raise LoraKitError(f"LQ-LoRA: the integer program found no solution ({result.message})")
    chosen = {p: c for (p, c), x in zip(pairs, result.x) if x > 0.5}
    return {p: chosen[p] for p in paths}


def fisher_diagonal(model: nn.Module, batches: Iterable, loss_fn: Callable,
                    targets: list[str] | str) -> dict[str, torch.Tensor]:
    """The diagonal empirical Fisher of each targeted Linear's weight: the mean over
    `batches` of the squared gradient of `loss_fn(model, batch)` (sec. 3.3)."""
    linears = linear_targets(model, targets, "LQ-LoRA Fisher")
    before = {p: m.weight.requires_grad for p, m in linears.items()}
    sums = {p: torch.zeros_like(m.weight, dtype=torch.float32) for p, m in linears.items()}
    n = 0
    try:
        for m in linears.values():
            m.weight.requires_grad_(True)
            m.weight.grad = None
        for batch in batches:
            loss_fn(model, batch).backward()
            for p, m in linears.items():
                sums[p] += m.weight.grad.float().pow(2)
                m.weight.grad = None
            n += 1
    finally:
        for p, m in linears.items():
            m.weight.grad = None
            m.weight.requires_grad_(before[p])
    if n == 0:
        raise LoraKitError("LQ-LoRA Fisher: no batches were given")
    return {p: s / n for p, s in sums.items()}


@dataclass
class LQChoice:
    """One matrix: its chosen config, decomposition error (relative, Fisher-weighted when a
    Fisher was given), storage bits per weight of Q, weights and iterations run."""

    path: str
    config: str
    error: float
    bits: float
    numel: int
    iterations: int


@dataclass
class LQReport:
    """What `lq_lora` chose: a row per matrix, the budget and the average bits per weight."""

    budget_bits: float
    rank: int
    fisher: bool
    matrices: list[LQChoice] = field(default_factory=list)

    @property
    def average_bits(self) -> float:
        """Σ storage bits of every Q / Σ weights (the low-rank part not counted)."""
        total = sum(m.numel for m in self.matrices)
        return sum(m.bits * m.numel for m in self.matrices) / max(total, 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "average_bits": self.average_bits}


def candidate_table(model: nn.Module, targets: list[str] | str, rank: int,
                    candidates: Sequence[str | QuantSpec] = CANDIDATES,
                    fisher: dict[str, torch.Tensor] | None = None, iterations: int = 10,
                    progress: bool = True) -> dict[str, dict]:
    """Each targeted matrix's decomposition error and true storage bits under every
    candidate config that fits it: what the ILP chooses from. One table serves every
    memory budget (`lq_lora(..., table=...)`), so a sweep over budgets decomposes once.

    Returns {"errors": {path: {config: error}}, "storage": {path: {config: bits}},
    "numel": {path: weights}}; JSON-ready."""
    specs = [QuantSpec.parse(c) for c in candidates]
    if not specs:
        raise LoraKitError("LQ-LoRA: no candidate configs")
    linears = linear_targets(model, targets, "LQ-LoRA")
    if fisher is not None:
        missing = [p for p in linears if p not in fisher]
        if missing:
            raise LoraKitError(f"LQ-LoRA: the Fisher has no entry for module {missing[0]!r}; "
                               "compute it with fisher_diagonal over the same targets")
    errors: dict[str, dict[str, float]] = {}
    storage: dict[str, dict[str, float]] = {}
    for path, linear in tqdm(linears.items(), desc="LQ-LoRA: candidates", disable=not progress):
        f = None if fisher is None else fisher[path]
        fits = [s for s in specs if linear.in_features % s.group_size == 0]
        if not fits:
            raise LoraKitError(f"LQ-LoRA: module {path!r} (in_features={linear.in_features}) "
                               "fits no candidate's group size")
        scale = _error(linear.weight.detach(), f)         # relative error -> Σ (F ⊙) R²
        errors[path], storage[path] = {}, {}
        for spec in fits:       # only the numbers are kept: one Q per candidate would not fit
            d = lq_decompose(linear.weight, spec, rank, iterations, f)
            errors[path][str(spec)] = d.error ** 2 * scale
            storage[path][str(spec)] = 8.0 * d.quantized.nbytes()
    return {"errors": errors, "storage": storage,
            "numel": {p: m.weight.numel() for p, m in linears.items()}}


def lq_lora(model: nn.Module, targets: list[str] | str, rank: int, budget_bits: float = 3.0,
            candidates: Sequence[str | QuantSpec] = CANDIDATES,
            fisher: dict[str, torch.Tensor] | None = None, iterations: int = 10,
            alpha: float | None = None, name: str = "default",
            progress: bool = True, table: dict | None = None) -> tuple[Adapters, LQReport]:
    """Decompose every nn.Linear matching `targets` for each candidate config, choose one
    config per matrix by the ILP under `budget_bits` average bits per weight, replace each
    by its Q (a QuantizedLinear) and attach a lorakit LoRA (rank `rank`, alpha `alpha`,
    default r) starting at L1 L2. `fisher`: path -> F (out × in) from `fisher_diagonal`, for
    the data-aware error and SVD. A candidate whose group size does not divide a matrix's
    inputs is skipped for that matrix; `progress`: a progress bar over the matrices.
    `table`: a `candidate_table` of the same model, targets, rank, candidates, Fisher and
    iterations, computed once for several budgets."""
    linears = linear_targets(model, targets, "LQ-LoRA")
    if table is None:
        table = candidate_table(model, targets, rank, candidates, fisher, iterations, progress)
    elif set(table["errors"]) != set(linears):
        extra = sorted(set(table["errors"]) ^ set(linears))
        raise LoraKitError(f"LQ-LoRA: the candidate table is of other modules ({extra[0]!r} "
                           "differs); compute it with candidate_table over the same targets")
    chosen = choose_configs(table["errors"], table["storage"], table["numel"], budget_bits)
    parts = {}
    for p, c in tqdm(chosen.items(), desc="LQ-LoRA: chosen", disable=not progress):
        bias = None if linears[p].bias is None else linears[p].bias.detach()
        # the same deterministic decomposition again, now with the bias, to keep
        parts[p] = lq_decompose(linears[p].weight, c, rank, iterations,
                                None if fisher is None else fisher[p], bias)
    report = LQReport(budget_bits, rank, fisher is not None, [
        LQChoice(p, c, parts[p].error, quantized_weight_bits(parts[p].quantized),
                 linears[p].weight.numel(), parts[p].iterations) for p, c in chosen.items()])
    return attach_low_rank(model, parts, rank, alpha, name), report
