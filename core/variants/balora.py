r"""BA-LoRA (Chang, Chang & Wu 2024, "BA-LoRA: Bias-Alleviating Low-Rank Adaptation to
Mitigate Catastrophic Inheritance in Large Language Models"): plain LoRA factors, trained
with three regularisers on the model's outputs.

    loss = task loss + λ1 L_consistency + λ2 L_diversity + λ3 L_svd        (sec. 3, "overall
                                                                            objective")

The regularisers answer the three parts of "catastrophic inheritance" the paper names:
knowledge drift (stay consistent with the frozen base's outputs), representation
collapse (keep the outputs diverse) and overfitting to noise (keep the output matrix
dominated by a few strong singular directions). Their forms differ for understanding
(NLU: a classifier's logits) and generation (NLG: next-token logits), as the paper's
method section gives them per task type; O (N × C) are the adapted model's outputs,
rows = examples (NLU) or tokens (NLG), O⁰ the frozen base's on the same inputs:

    NLU  consistency  mean over entries of (O/‖O‖ − O⁰/‖O⁰‖)²   rows ℓ2-normalised (MSE)
         diversity    Σ_{i≠j} C_ij² / C,  C = covariance of O's columns over the N rows
    NLG  consistency  mean over rows of KL(softmax O⁰ ‖ softmax O)
         diversity    mean over rows of Σ p log p,  p = softmax O   (entropy maximised)
    both svd          − Σ_{i≤k} σ_i / Σ_i σ_i,  σ the singular values of O

λ1, λ2, λ3 and k default to 1e-4, 3e-4, 1e-4 and 3, the values of the authors' code
(github.com/cyp-jlu-ai/BA-LoRA, train.py); they are `LoRAConfig.ba_consistency`,
`ba_diversity`, `ba_svd` and `ba_svd_k`, and `ba_task` picks NLU or NLG. Unlike that
code, the SVD term here keeps its gradient (torch's `svdvals` is differentiable), so
λ3 acts on training.

The paper starts A and B from W's principal singular vectors (PiSSA); here the
factors start as LoRA's (B = 0, so training starts at the base), and the regularisers
are the method. The base outputs need no second model: `with adapters.disabled():` the same student is
the frozen base (`AdapterModule.output_regularisers` does exactly that). At inference a
BA-LoRA adapter is a plain LoRA adapter: merge, `adapter merge` and PEFT export need
nothing more.
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


def nlg_consistency(o: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """KL(base ‖ adapted) per row, averaged over rows."""
    return F.kl_div(F.log_softmax(o, dim=-1), F.log_softmax(base, dim=-1), log_target=True,
                    reduction="sum") / o.shape[0]


def nlg_diversity(o: torch.Tensor) -> torch.Tensor:
    """Negative entropy of each row's distribution, averaged: minimising it spreads p."""
    logp = F.log_softmax(o, dim=-1)
    return (logp.exp() * logp).sum(dim=-1).mean()


def svd_term(o: torch.Tensor, k: int) -> torch.Tensor:
    s = torch.linalg.svdvals(o)
    return -s[:k].sum() / s.sum().clamp_min(1e-12)


class BALoRA(LoRA):
    method = "balora"
    output_regularised = True

    @classmethod
    def output_terms(cls, config: LoRAConfig, outputs: torch.Tensor,
                     base_outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if base_outputs is None:
            raise LoraKitError("BA-LoRA's consistency term needs the frozen base's outputs: "
                               "compute them `with adapters.disabled():` and pass them")
        if base_outputs.shape != outputs.shape:
            raise LoraKitError(f"BA-LoRA: outputs {tuple(outputs.shape)} and base outputs "
                               f"{tuple(base_outputs.shape)} differ in shape")
        o, base = rows(outputs), rows(base_outputs).detach()
        if config.ba_task == "nlu":
            consistency, diversity = nlu_consistency(o, base), nlu_diversity(o)
        else:
            consistency, diversity = nlg_consistency(o, base), nlg_diversity(o)
        return {"consistency": config.ba_consistency * consistency,
                "diversity": config.ba_diversity * diversity,
                "svd": config.ba_svd * svd_term(o, config.ba_svd_k)}
