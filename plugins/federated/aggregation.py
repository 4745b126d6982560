r"""Server-side aggregation of clients' LoRA adapters: the maths, in pure torch, no Flower.

A client's adapter is a flat map `{key: tensor}` with lorakit's file keys
(`<module path>.lora_A` r × in, `.lora_B` out × r, `.lora_R` r × r for LoRA-SB); for each
adapted module the update is ΔW = scale · B A (LoRA-SB: scale · B R A). With client
weights pᵢ (their example counts, normalised) the *ideal* global update of a module is
Σ pᵢ ΔWᵢ. The strategies differ in what a client sends and how close the aggregate is:

- ``fedavg``  (FedIT): send A and B, average each. Σ pᵢ Bᵢ · Σ pᵢ Aᵢ ≠ Σ pᵢ Bᵢ Aᵢ, so the
  aggregate is inexact; `aggregation_error` is ‖B̄ Ā − Σ pᵢ Bᵢ Aᵢ‖_F over all modules
  (root of the summed squares), unscaled.
- ``ffa``     (FFA-LoRA, Sun et al. 2024): A is frozen at one shared init, send B only:
  Σ pᵢ Bᵢ A = B̄ A, exact, half the bytes.
- ``fair``    (LoRA-FAIR, Bian et al., ICCV 2025): average A and B as FedAvg does, then
  add a server-side residual ΔB to B̄ so that (B̄ + ΔB) Ā points the way the ideal update
  Ŵ = Σ pᵢ Bᵢ Aᵢ does; the next round's clients start from (Ā, B̄ + ΔB) (the paper's
  "Avg-Initial" initialisation refinement: no re-init, the refined pair is what every
  client continues from). ΔB is the paper's Eq. 8, solved per module by gradient steps
  from ΔB = 0 (`fair_solver="sgd"`, the default):
      min_ΔB  1 − S(Ŵ, (B̄ + ΔB) Ā) + λ ‖ΔB‖²_F,
  S the cosine similarity of the two matrices taken as vectors (`fair_similarity=
  "cosine"`; "column_cosine": the mean cosine of matching columns, one per input feature,
  as one public re-implementation reads it), λ = 0.01 (the paper's value), `fair_steps`
  plain SGD steps at `fair_lr` (1000 at 0.01: the paper says SGD but, in what was read of
  it, not how long or how fast; these are public re-implementations' defaults). ΔB starts
  at zero, so identical clients get ΔB = 0. The similarity is scale-free, so λ alone
  bounds ΔB: it is the paper's trade between matching Ŵ and keeping B̄' close to B̄ (the
  next round's start). Being scale-free also means a gradient ∝ 1/‖B̄Ā‖: when B̄Ā is tiny
  the fixed step overshoots and inflates ΔB (`delta_ratio` in the metrics shows it).
  `fair_solver="closed_form"` instead solves the Frobenius version of the problem,
  min ‖(B̄ + ΔB) Ā − Ŵ‖²_F + λ ‖ΔB‖²_F, by ridge regression:
  ΔB = (Ŵ − B̄Ā) Āᵀ (Ā Āᵀ + λ I)⁻¹. Either way the error left is at least what no product
  with row space Ā can represent.
- ``fedsb``   (Fed-SB, Singhal et al. 2025, on LoRA-SB): B and A are fixed and shared (set
  once, with R's start, by LoRA-SB's gradient init from the clients' pooled gradient:
  `strategy.LoRAStrategy.init_round`), only the r × r R trains: send R, Σ pᵢ B Rᵢ A = B R̄ A,
  exact; r² numbers per module whatever the number of clients.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import STRATEGIES, FairConfig, check_choice

# which factor keys a client sends under each strategy
SENT = {"fedavg": ("lora_A", "lora_B"), "fair": ("lora_A", "lora_B"),
        "ffa": ("lora_B",), "fedsb": ("lora_R",)}
# the lorakit variant each strategy trains
METHOD = {"fedavg": "lora", "fair": "lora", "ffa": "ffa_lora", "fedsb": "lora_sb"}


def check_strategy(strategy: str) -> str:
    check_choice("strategy", strategy, STRATEGIES)
    return strategy


FACTORS = ("lora_A", "lora_B", "lora_R")


def sent_keys(strategy: str, keys) -> list[str]:
    """The keys of a full adapter state that a client sends under `strategy`: its factors,
    and under every strategy the tensors of modules trained in full (a classification
    head in `modules_to_save`), which are plainly averaged."""
    suffixes = SENT[check_strategy(strategy)]
    return [k for k in keys
            if k.rsplit(".", 1)[-1] in suffixes or k.rsplit(".", 1)[-1] not in FACTORS]


def payload_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def reject_reason(update: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]],
                  base_id: str | None = None, client_base_id: str | None = None) -> str | None:
    """Why the server must not use a client's update, or None when it fits: another base
    model, missing or unexpected keys, a wrong shape, non-finite values."""
    if base_id is not None and client_base_id != base_id:
        return f"adapter is for base {client_base_id!r}, this run's base is {base_id!r}"
    missing = sorted(set(expected) - set(update))
    if missing:
        return f"missing tensors {missing[:3]}"
    unexpected = sorted(set(update) - set(expected))
    if unexpected:
        return f"unexpected tensors {unexpected[:3]}"
    for key, shape in expected.items():
        got = tuple(update[key].shape)
        if got != tuple(shape):
            return f"tensor {key!r} has shape {got}, expected {tuple(shape)}"
        if not torch.isfinite(update[key]).all():
            return f"tensor {key!r} has non-finite values"
    return None


def weighted_mean(tensors: list[torch.Tensor], p: torch.Tensor) -> torch.Tensor:
    return sum(w * t.double() for w, t in zip(p.tolist(), tensors))


def _modules(keys) -> list[str]:
    return sorted({k.rsplit(".", 1)[0] for k in keys if k.endswith((".lora_A", ".lora_B"))})


def similarity(measure: str, a: torch.Tensor, target: torch.Tensor):
    """b ↦ S(target, b a) per module of a stack: a (k, r, in), target (k, out, in), b (k, out, r).
    Neither measure forms b a: with ⟨b a, T⟩ = ⟨b, T aᵀ⟩ and ‖b a‖² = ⟨b (a aᵀ), b⟩ (and
    the same per column) a step costs O(out·r²) for "cosine", O(out·in·r) per column."""
    eps = 1e-12
    if measure == "cosine":
        gram, inner = a @ a.transpose(1, 2), target @ a.transpose(1, 2)
        t_norm = target.flatten(1).norm(dim=1).clamp_min(eps)

        def cosine(b):
            norm = ((b @ gram) * b).sum((1, 2)).clamp_min(eps ** 2).sqrt()
            return (b * inner).sum((1, 2)) / (norm * t_norm)
        return cosine
    t_cols, a_cols = target.transpose(1, 2), a.transpose(1, 2)      # (k, in, out), (k, in, r)
    t_norm = target.norm(dim=1).clamp_min(eps)                        # (k, in)

    def column_cosine(b):
        inner = ((t_cols @ b) * a_cols).sum(2)
        norm = ((b.transpose(1, 2) @ b @ a) * a).sum(1).clamp_min(eps ** 2).sqrt()
        return (inner / (norm * t_norm)).mean(1)
    return column_cosine


def fair_residuals(a: torch.Tensor, b: torch.Tensor, target: torch.Tensor,
                   cfg: FairConfig) -> torch.Tensor:
    """ΔB for a stack of modules of one shape (float64): a = Ā (k, r, in), b = B̄ (k, out, r),
    target = Ŵ (k, out, in). The modules' problems are independent; summing their losses
    gives each its own gradient, so one SGD run over the stack is k separate ones."""
    if cfg.solver == "closed_form":
        gram = a @ a.transpose(1, 2) + cfg.lam * torch.eye(a.shape[1], dtype=a.dtype)
        return torch.linalg.solve(gram, a @ (target - b @ a).transpose(1, 2)).transpose(1, 2)
    sim = similarity(cfg.similarity, a, target)
    delta = torch.zeros_like(b, requires_grad=True)
    opt = torch.optim.SGD([delta], lr=cfg.lr)
    for _ in range(cfg.steps):
        opt.zero_grad()
        loss = (1 - sim(b + delta) + cfg.lam * delta.pow(2).sum((1, 2))).sum()
        loss.backward()
        opt.step()
    return delta.detach()


@dataclass
class Aggregate:
    state: dict[str, torch.Tensor]          # the new global adapter (full state)
    error: float                            # ‖aggregated ΔW − ideal ΔW‖_F, unscaled
    error_before: float                     # the same before LoRA-FAIR's correction
    metrics: dict = field(default_factory=dict)


def aggregate(strategy: str, global_state: dict[str, torch.Tensor],
              updates: list[dict[str, torch.Tensor]], weights: list[float],
              fair: FairConfig | None = None) -> Aggregate:
    """Combine clients' sent tensors (`updates`, each over `sent_keys`) with the current
    global adapter (for the factors clients do not send) into the next global adapter.
    Under `fair`, metrics also hold the mean similarity S(Ŵ, B̄Ā) over modules before and
    after the correction and ‖ΔB‖_F / ‖B̄‖_F over all modules."""
    check_strategy(strategy)
    if not updates:
        raise ValueError("aggregate: no client updates")
    fair = fair or FairConfig()
    p = torch.tensor(weights, dtype=torch.float64)
    p = p / p.sum()
    full = [{**global_state, **u} for u in updates]
    new = dict(global_state)
    for key in updates[0]:
        new[key] = weighted_mean([u[key] for u in updates], p).to(global_state[key].dtype)
    ideal, got = {}, {}
    for path in _modules(global_state):
        a_k, b_k, r_k = f"{path}.lora_A", f"{path}.lora_B", f"{path}.lora_R"
        if r_k in global_state:     # LoRA-SB: ΔW = B R A
            ideal[path] = weighted_mean([s[b_k].double() @ s[r_k].double() @ s[a_k].double()
                                 for s in full], p)
            got[path] = new[b_k].double() @ new[r_k].double() @ new[a_k].double()
        else:
            ideal[path] = weighted_mean([s[b_k].double() @ s[a_k].double() for s in full], p)
            got[path] = new[b_k].double() @ new[a_k].double()
    error_before = _error(got, ideal)
    metrics = {"clients": len(updates), "bytes_per_client": payload_bytes(updates[0])}
    if strategy == "fair" and ideal:
        metrics.update(_correct(new, ideal, got, fair))
    return Aggregate(new, _error(got, ideal), error_before, metrics)


def _error(got: dict, ideal: dict) -> float:
    return sum(float(torch.linalg.matrix_norm(got[m] - ideal[m])) ** 2 for m in ideal) ** 0.5


def _correct(new: dict, ideal: dict, got: dict, cfg: FairConfig) -> dict:
    """LoRA-FAIR in place: B̄ ← B̄ + ΔB in `new` and the products in `got`, modules of one
    shape solved together."""
    groups: dict[tuple, list[str]] = {}
    for path in ideal:
        groups.setdefault(tuple(new[f"{path}.lora_B"].shape + new[f"{path}.lora_A"].shape),
                          []).append(path)
    before, after, delta_sq, b_sq = [], [], 0.0, 0.0
    for paths in groups.values():
        a = torch.stack([new[f"{m}.lora_A"].double() for m in paths])
        b = torch.stack([new[f"{m}.lora_B"].double() for m in paths])
        target = torch.stack([ideal[m] for m in paths])
        delta = fair_residuals(a, b, target, cfg)
        sim = similarity(cfg.similarity, a, target)
        before += sim(b).tolist()
        after += sim(b + delta).tolist()
        delta_sq += float(delta.pow(2).sum())
        b_sq += float(b.pow(2).sum())
        for i, m in enumerate(paths):
            key = f"{m}.lora_B"
            new[key] = (b[i] + delta[i]).to(new[key].dtype)
            got[m] = (b[i] + delta[i]) @ a[i]
    return {"similarity_before": sum(before) / len(before),
            "similarity_after": sum(after) / len(after),
            "delta_ratio": (delta_sq / b_sq) ** 0.5 if b_sq > 0 else 0.0}
