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
- ``fair``    (LoRA-FAIR, Bian et al. 2024/ICCV 2025): average A and B as FedAvg does,
  then add a server-side residual ΔB so that (B̄ + ΔB) Ā is as close as possible to the
  ideal Σ pᵢ Bᵢ Aᵢ; the next round's clients start from (Ā, B̄ + ΔB) (the paper's
  "initialisation refinement": no re-init, the refined pair is what they continue from).
  The paper picks ΔB by a few gradient steps on a normalised similarity loss plus a
  λ‖ΔB‖ regulariser; here the Frobenius version of that problem,
      min_ΔB ‖(B̄ + ΔB) Ā − Σ pᵢ Bᵢ Aᵢ‖²_F + λ ‖ΔB‖²_F,
  is solved in closed form (ridge regression): ΔB = (Ŵ − B̄Ā) Āᵀ (Ā Āᵀ + λ I)⁻¹. The error
  left is what no rank-r product with row space Ā can represent.
- ``fedsb``   (Fed-SB, Singhal et al. 2025, on LoRA-SB): B and A are fixed and shared,
  only the r × r R trains: send R, Σ pᵢ B Rᵢ A = B R̄ A, exact; r² numbers per module
  whatever the number of clients.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

STRATEGIES = ("fedavg", "ffa", "fair", "fedsb")

# which factor keys a client sends under each strategy
SENT = {"fedavg": ("lora_A", "lora_B"), "fair": ("lora_A", "lora_B"),
        "ffa": ("lora_B",), "fedsb": ("lora_R",)}
# the lorakit variant each strategy trains
METHOD = {"fedavg": "lora", "fair": "lora", "ffa": "ffa_lora", "fedsb": "lora_sb"}


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown federated strategy {strategy!r}; choose one of {STRATEGIES}")
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


def _mean(tensors: list[torch.Tensor], p: torch.Tensor) -> torch.Tensor:
    return sum(w * t.double() for w, t in zip(p.tolist(), tensors))


def _modules(keys) -> list[str]:
    return sorted({k.rsplit(".", 1)[0] for k in keys if k.endswith((".lora_A", ".lora_B"))})


@dataclass
class Aggregate:
    state: dict[str, torch.Tensor]          # the new global adapter (full state)
    error: float                            # ‖aggregated ΔW − ideal ΔW‖_F, unscaled
    error_before: float                     # the same before LoRA-FAIR's correction
    metrics: dict = field(default_factory=dict)


def aggregate(strategy: str, global_state: dict[str, torch.Tensor],
              updates: list[dict[str, torch.Tensor]], weights: list[float],
              fair_lambda: float = 1e-3) -> Aggregate:
    """Combine clients' sent tensors (`updates`, each over `sent_keys`) with the current
    global adapter (for the factors clients do not send) into the next global adapter."""
    check_strategy(strategy)
    if not updates:
        raise ValueError("aggregate: no client updates")
    p = torch.tensor(weights, dtype=torch.float64)
    p = p / p.sum()
    full = [{**global_state, **u} for u in updates]
    new = dict(global_state)
    for key in updates[0]:
        new[key] = _mean([u[key] for u in updates], p).to(global_state[key].dtype)
    sq_before = sq_after = 0.0
    for path in _modules(global_state):
        a_k, b_k, r_k = f"{path}.lora_A", f"{path}.lora_B", f"{path}.lora_R"
        if r_k in global_state:     # LoRA-SB: ΔW = B R A
            ideal = _mean([s[b_k].double() @ s[r_k].double() @ s[a_k].double() for s in full], p)
            got = new[b_k].double() @ new[r_k].double() @ new[a_k].double()
        else:
            ideal = _mean([s[b_k].double() @ s[a_k].double() for s in full], p)
            got = new[b_k].double() @ new[a_k].double()
        before = float(torch.linalg.matrix_norm(got - ideal)) ** 2
        sq_before += before
        if strategy == "fair":
            a = new[a_k].double()
            gram = a @ a.T + fair_lambda * torch.eye(a.shape[0], dtype=a.dtype)
            delta_b = torch.linalg.solve(gram, a @ (ideal - got).T).T
            new[b_k] = (new[b_k].double() + delta_b).to(global_state[b_k].dtype)
            got = new[b_k].double() @ a
            sq_after += float(torch.linalg.matrix_norm(got - ideal)) ** 2
        else:
            sq_after += before
    return Aggregate(new, sq_after ** 0.5, sq_before ** 0.5,
                     {"clients": len(updates), "bytes_per_client": payload_bytes(updates[0])})
