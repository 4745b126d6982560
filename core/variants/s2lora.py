r"""S2-LoRA (Sparsely Shared LoRA, Liu et al. 2025): ΔWᵢ = scale · B diag(λᵢ) A.

    x ─► dropout ─► A (r × in, shared) ─► ⊙ λᵢ (r) ─► · scale ─► B (out × r, shared) ─► + W x

One A and one B are shared by every adapted matrix of the same shape (in, out); each
matrix keeps only λᵢ (r numbers). λ starts at one, so with B = 0 the model starts at
the base and every rank is in use; an L1 penalty on λ (`penalty`) switches ranks off,
and `prune` drops the ranks no matrix of a shape uses. Each matrix is still exactly
a LoRA update with factors A and B·diag(λᵢ), which is how it exports to PEFT.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import LoRAConfig
from ..layers.kinds import LayerKind
from .base import Variant, init_down_projection


class SharedBasis(nn.Module):
    """The A and B that every S2-LoRA matrix of one shape (in, out) shares."""

    def __init__(self, in_features: int, out_features: int, rank: int, init: str,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype, device=device))
        init_down_projection(self.lora_A, init)

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]


def basis_key(in_features: int, out_features: int) -> str:
    return f"shared.{in_features}x{out_features}"


class S2LoRA(Variant):
    method = "s2lora"
    summary = ('A and B shared by all adapted matrices of one shape, each matrix keeps a '
               'rank-coefficient vector lambda, dW_i = B diag(lambda_i) A (S2-LoRA, Liu et al. '
               '2025).')
    param_kinds = {"lora_lambda": "lambda"}

    def __init__(self, kind: LayerKind, config: LoRAConfig, dtype: torch.dtype,
                 device: torch.device, shared: nn.Module | None = None) -> None:
        super().__init__(kind, config, dtype, device, shared)
        self.basis = shared
        self.lora_lambda = nn.Parameter(torch.ones(shared.rank, dtype=dtype, device=device))

    @classmethod
    def shared_key(cls, kind, path, config):
        return basis_key(kind.in_features, kind.out_features)

    @classmethod
    def make_shared(cls, kind, config, dtype, device, key):
        return SharedBasis(kind.in_features, kind.out_features, config.rank, config.init,
                           dtype, device)

    def shared_tensors(self):
        key = basis_key(self.basis.lora_A.shape[1], self.basis.lora_B.shape[0])
        return {f"{key}.lora_A": self.basis.lora_A, f"{key}.lora_B": self.basis.lora_B}

    def factors(self):
        return self.basis.lora_A, self.basis.lora_B * self.lora_lambda

    def forward(self, x: torch.Tensor, kind: LayerKind, base: nn.Module) -> torch.Tensor:
        # λ on the r-wide middle, not on B: one multiply of r numbers per row
        a = self.basis.lora_A
        if kind.float_input:
            x = self.dropout(x.to(a.dtype))
        h = kind.per_rank(kind.down(x, a), self.lora_lambda * self.scale)
        return kind.up(h, self.basis.lora_B)

    def penalty(self) -> torch.Tensor:
        return self.lora_lambda.abs().sum()

    @torch.no_grad()
    def shrink(self, threshold) -> None:
        lam = self.lora_lambda
        lam.copy_(lam.sign() * (lam.abs() - threshold(lam)).clamp(min=0))

    def active_rank(self, tol: float) -> int:
        return int((self.lora_lambda.detach().abs() > tol).sum())

    @classmethod
    def file_keys(cls, path, kind, weight_shape):
        out_f, in_f = kind.matrix_shape(weight_shape)
        key = basis_key(in_f, out_f)
        return [f"{path}.lora_lambda", f"{key}.lora_A", f"{key}.lora_B"]

    @classmethod
    def file_factors(cls, tensors, path, kind, weight_shape):
        out_f, in_f = kind.matrix_shape(weight_shape)
        key = basis_key(in_f, out_f)
        return tensors[f"{key}.lora_A"], tensors[f"{key}.lora_B"] * tensors[f"{path}.lora_lambda"]

    @classmethod
    def file_active_rank(cls, tensors, path, kind, weight_shape, tol):
        return int((tensors[f"{path}.lora_lambda"].abs() > tol).sum())

    # --- the shared basis shrinks as a whole -------------------------------------------
    @staticmethod
    def _groups(members: list[S2LoRA]) -> dict[int, list[S2LoRA]]:
        groups: dict[int, list[S2LoRA]] = {}
        for m in members:
            groups.setdefault(id(m.basis), []).append(m)
        return groups

    @staticmethod
    def _keep(users: list[S2LoRA], keep: torch.Tensor) -> None:
        basis = users[0].basis
        basis.lora_A = nn.Parameter(basis.lora_A.data[keep].clone())
        basis.lora_B = nn.Parameter(basis.lora_B.data[:, keep].clone())
        for m in users:
            m.lora_lambda = nn.Parameter(m.lora_lambda.data[keep].clone())

    @classmethod
    @torch.no_grad()
    def fit_to_state(cls, members, state):
        """A pruned file's bases have fewer ranks: shrink to them before loading."""
        for users in cls._groups(members).values():
            key = next(iter(users[0].shared_tensors()))
            a = state.get(key)
            if a is not None and a.shape[0] != users[0].basis.rank:
                cls._keep(users, torch.arange(a.shape[0]))

    @classmethod
    @torch.no_grad()
    def prune(cls, members, tol):
        """Drop the ranks whose |λ| ≤ tol in every matrix sharing a basis."""
        new_ranks = {}
        for users in cls._groups(members).values():
            lam = torch.stack([m.lora_lambda.abs() for m in users])
            keep = (lam > tol).any(dim=0)
            key = next(iter(users[0].shared_tensors())).removesuffix(".lora_A")
            cls._keep(users, keep)
            new_ranks[key] = int(keep.sum())
        return new_ranks
