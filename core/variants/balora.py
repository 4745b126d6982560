r"""BA-LoRA (Chang, Chang & Wu 2024, "BA-LoRA: Bias-Alleviating Low-Rank Adaptation to
Mitigate Catastrophic Inheritance in Large Language Models"): plain LoRA factors, trained
with three regularisers on the model's outputs.

    loss = task loss + λ1 L_consistency + λ2 L_diversity + λ3 L_svd

The regularisers answer the three parts of "catastrophic inheritance" the paper names:
knowledge drift (stay consistent with the frozen base's outputs), representation
collapse (keep the outputs diverse) and overfitting to noise (keep the output matrix
dominated by a few strong singular directions). Their forms differ for understanding
(NLU: a classifier's logits) and generation (NLG: next-token logits). O (N × C) are the
adapted model's outputs, rows = examples (NLU) or tokens (NLG), O⁰ the frozen base's on
the same inputs, S the number of sequences the token rows came from:

    NLU  consistency  mean over entries of (O/‖O‖ − O⁰/‖O⁰‖)²   rows ℓ2-normalised (MSE)
         diversity    Σ_{i≠j} C_ij² / C,  C = covariance of O's columns over the N rows
                      (divided by N − 1)
    NLG  consistency  Σ over token rows of KL(softmax O⁰ ‖ softmax O) / S: summed over a
                      sequence's tokens, averaged over sequences
         diversity    mean over rows of Σ p log p,  p = softmax O   (entropy maximised)
    both svd          − Σ_{i≤k} σ_i / Σ_i σ_i,  σ the singular values of O

Source checked: the authors' code, github.com/cyp-jlu-ai/BA-LoRA, `train.py` (commit
e119f2f, `BALoRATrainer.compute_loss` and `svd_regularization`); the paper's method
section itself could not be read here (only its abstract), so the forms above are the
code's, with these notes:

- NLG consistency: the code calls `kl_div(log p, p⁰, reduction="batchmean")` on
  (batch × tokens × vocab) probabilities, and batchmean divides the sum over every token
  by the batch size, not by the token count; so here too the sum over tokens is divided
  by S (`sequences`, passed by `regularisers` for 3-D outputs). A padding mask drops
  rows from the sum, which the code (no mask) does not; 2-D outputs are S = N rows.
- NLG diversity: the code's entropy adds 1e-10 inside the log; log_softmax needs none.
- SVD term: the code's `svd_regularization` reshapes 3-D logits to (batch × tokens·vocab)
  and then indexes the singular values as if batched (`s[:, :k]`), which fails on the
  1-D vector that `torch.linalg.svd` returns for a matrix; the intended quantity is the
  top-k share above, and here it is taken over O with token rows, as the other terms
  are. Neither the code nor this one detaches it: the term carries gradient (torch's
  SVD is differentiable), so λ3 acts on training.
- λ1, λ2, λ3 and k default to 1e-4, 3e-4, 1e-4 and 3, the code's defaults (also in its
  `scripts/ba-lora.sh`); they are `LoRAConfig.ba_consistency`, `ba_diversity`, `ba_svd`
  and `ba_svd_k`, and `ba_task` picks NLU or NLG (the code's `task_type`, default nlu).

The paper's script starts A and B from W's principal singular vectors (PiSSA,
`--init_lora_weights pissa` in `scripts/ba-lora.sh`); here the factors start as LoRA's
(B = 0, so training starts at the base), and the regularisers are the method. The base
outputs need no second model: `with adapters.disabled():` the same student is the frozen
base (`AdapterModule.output_regularisers` does exactly that). At inference a BA-LoRA
adapter is a plain LoRA adapter: merge, `adapter merge` and PEFT export need nothing
more.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import LoRAConfig
from ..errors import LoraKitError
from .lora import LoRA


def rows(outputs: torch.Tensor) -> torch.Tensor:
    """Outputs as an (N × C) matrix: every leading axis is a row (examples or tokens)."""
    return outputs.reshape(-1, outputs.shape[-1]).float()


def nlu_consistency(o: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(F.normalize(o, dim=-1), F.normalize(base, dim=-1))


def nlu_diversity(o: torch.Tensor) -> torch.Tensor:
    centred = o - o.mean(dim=0)
    cov = centred.T @ centred / max(o.shape[0] - 1, 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.square().sum() / o.shape[1]


def nlg_consistency(o: torch.Tensor, base: torch.Tensor,
                    sequences: int | None = None) -> torch.Tensor:
    """KL(base ‖ adapted) per token row, summed, over the number of sequences (every row
    its own sequence when None): the authors' `reduction="batchmean"`."""
    return F.kl_div(F.log_softmax(o, dim=-1), F.log_softmax(base, dim=-1), log_target=True,
                    reduction="sum") / (sequences or o.shape[0])


def nlg_diversity(o: torch.Tensor) -> torch.Tensor:
    """Negative entropy of each row's distribution, averaged: minimising it spreads p."""
    logp = F.log_softmax(o, dim=-1)
    return (logp.exp() * logp).sum(dim=-1).mean()


def svd_term(o: torch.Tensor, k: int) -> torch.Tensor:
    s = torch.linalg.svdvals(o)
    return -s[:k].sum() / s.sum().clamp_min(1e-12)


class BALoRA(LoRA):
    method = "balora"
    summary = ("LoRA with consistency, diversity and SVD regularisers on the model's outputs "
               '(BA-LoRA, Chang et al. 2024).')
    output_regularised = True

    @classmethod
    def output_terms(cls, config: LoRAConfig, outputs: torch.Tensor,
                     base_outputs: torch.Tensor,
                     sequences: int | None = None) -> dict[str, torch.Tensor]:
        if base_outputs is None:
            raise LoraKitError("BA-LoRA's consistency term needs the frozen base's outputs: "
                               "compute them `with adapters.disabled():` and pass them")
        if base_outputs.shape != outputs.shape:
            raise LoraKitError(f"BA-LoRA: outputs {tuple(outputs.shape)} and base outputs "
                               f"{tuple(base_outputs.shape)} differ in shape")
        if sequences is None and outputs.dim() > 2:
            sequences = outputs.shape[0]
        o, base = rows(outputs), rows(base_outputs).detach()
        if config.balora.task == "nlu":
            consistency, diversity = nlu_consistency(o, base), nlu_diversity(o)
        else:
            consistency = nlg_consistency(o, base, sequences)
            diversity = nlg_diversity(o)
        return {"consistency": config.balora.consistency * consistency,
                "diversity": config.balora.diversity * diversity,
                "svd": config.balora.svd * svd_term(o, config.balora.svd_k)}
