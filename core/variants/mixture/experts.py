"""The experts of a mixture: which methods an expert can be, and the stacked compute.

Every expert's tensors are stacked under its method's own names (lora_A (E, r, in),
lora_B (E, out, r), ...), and the mixture applies them with two matmuls over the stack,
never a Python loop over experts: `mixed` (every expert, gates zero outside each token's
top k) or `gathered` (each token's k experts only, through the routed-batch kernel).
"""
from __future__ import annotations

import torch

from ...errors import LoraKitError
from ...layers.kinds import LayerKind
from ..base import Variant
from ..dora import DoRA
from ..ffa_lora import FFALoRA
from ..lora import LoRA

#: methods an expert can be: their tensors are their own and no training hook of theirs
#: would be skipped (tests/core/test_mixture.py checks the hooks)
EXPERTS: dict[str, type[Variant]] = {c.method: c for c in (LoRA, DoRA, FFALoRA)}


def expert_class(method: str) -> type[Variant]:
    if method not in EXPERTS:
        raise LoraKitError(
            f"LoRAConfig.mixture.expert_method {method!r}: a mixture's experts can be "
            f"{', '.join(EXPERTS)}. The other methods need what stacked experts do not run: "
            "a training hook of their own (ALLoRA's gradient rescaling, GGPO's perturbed "
            "pass, BA-LoRA's output terms), a basis shared across modules (S2-LoRA), a "
            "gradient-driven init (LoRA-GA, LoRA-SB), or are mixtures themselves")
    return EXPERTS[method]



def mixed(kind: LayerKind, rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
          weights: torch.Tensor) -> torch.Tensor:
    """Σ_e weights[:, e] · B_e A_e x for every row: rows (N, in), a (E, r, in), b (E, out, r),
    weights (N, E) -> (N, out). Two matmuls over the stacked experts, no loop over them;
    an expert whose weight is zero on every row gets exactly zero gradient."""
    e, r = a.shape[0], a.shape[1]
    h = kind.down(rows, a.reshape(e * r, -1)).view(-1, e, r) * weights.to(a.dtype)[..., None]
    return kind.up(h.reshape(-1, e * r), b.permute(1, 0, 2).reshape(b.shape[1], e * r))


def gathered(kind: LayerKind, rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
             index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_j weights[:, j] · B_{index[:, j]} A_{index[:, j]} x for every row, over each row's
    k chosen experts only: rows (N, in), index and weights (N, k) -> (N, out). Each
    (row, choice) is one row of the mixed-adapter batch kernel `kind.routed`: one gather
    of its A and B from the stacks, two batched matmuls."""
    n, k = index.shape
    each = kind.routed(rows.repeat_interleave(k, dim=0)[:, None], a, b, index.reshape(-1))
    return (each.view(n, k, -1) * weights.to(each.dtype)[..., None]).sum(1)

