"""The routers of a mixture: expert counts per layer, the shared block router, and the
auxiliary losses and statistics of the routing, as plain functions."""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from ...config import LoRAConfig
from ...errors import LoraKitError


# --- layer-wise expert allocation (MoLA) ---------------------------------------------------
def layer_key(path: str) -> str:
    """The depth layer a module belongs to: its path up to the first numeric component
    ('encoder.layer.3.attention.self.query' -> 'encoder.layer.3'); the path itself if none."""
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    return path


def parse_schedule(text: str) -> list[int]:
    try:
        values = [int(v) for v in re.split(r"[,\s]+", text.strip()) if v]
    except ValueError:
        raise LoraKitError(f"LoRAConfig.mixture.expert_schedule {text!r}: give expert counts separated "
                           "by commas, e.g. '2,4,6,8'") from None
    if not values or min(values) < 1:
        raise LoraKitError(f"LoRAConfig.mixture.expert_schedule {text!r}: every count must be >= 1")
    return values


def allocation(config: LoRAConfig, paths: list[str]) -> dict[str, int]:
    """Module path -> its number of experts, from `n_experts`, `expert_schedule` or
    `experts_per_layer`; every module of one depth layer gets the same count."""
    layers = list(dict.fromkeys(layer_key(p) for p in paths))
    if config.mixture.experts_per_layer:
        counts = list(config.mixture.experts_per_layer)
        if len(counts) != len(layers):
            shown = ", ".join(layers[:4]) + (" ..." if len(layers) > 4 else "")
            raise LoraKitError(
                f"LoRAConfig.mixture.experts_per_layer has {len(counts)} entries but the targets "
                f"{config.targets} adapt {len(layers)} layers ({shown}); give one count per "
                "layer, or a depth schedule with expert_schedule='2,4,6,8'")
    elif config.mixture.expert_schedule:
        schedule = parse_schedule(config.mixture.expert_schedule)
        if len(schedule) > len(layers):
            raise LoraKitError(
                f"LoRAConfig.mixture.expert_schedule {config.mixture.expert_schedule!r} has {len(schedule)} "
                f"depth segments but the targets adapt only {len(layers)} layers")
        # layer i of n falls in segment floor(i · segments / n): quarters for four values
        counts = [schedule[i * len(schedule) // len(layers)] for i in range(len(layers))]
    else:
        counts = [config.mixture.n_experts] * len(layers)
    per_layer = dict(zip(layers, counts))
    for layer, n in per_layer.items():
        if n < 1:
            raise LoraKitError(f"layer {layer!r} is given {n} experts; every layer needs >= 1")
        if config.mixture.router == "topk" and config.mixture.top_k > n:
            raise LoraKitError(f"LoRAConfig.mixture.top_k={config.mixture.top_k} but layer {layer!r} has only "
                               f"{n} experts: top_k must not exceed any layer's expert count")
        if config.mixture.lbc_weight > 0 and n % 2:
            raise LoraKitError(f"LoRAMoE's localized balancing splits the experts in two "
                               f"equal groups, but layer {layer!r} has {n}: use even counts")
    return {p: per_layer[layer_key(p)] for p in paths}



def router_key(layer: str) -> str:
    """File key of a `router_scope="block"` router: one per depth layer."""
    return f"{layer}.moe_router"


class BlockRouter(nn.Module):
    """One router (E × in of the block's first adapted module) shared by the adapted
    modules of one depth layer, and the routing of its last forward for the others."""

    def __init__(self, layer: str, n_experts: int, in_features: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        super().__init__()
        self.layer = layer
        self.weight = nn.Parameter(torch.empty(n_experts, in_features, dtype=dtype,
                                               device=device))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.claimed = False                 # whether a module already routes with it
        self.routed: torch.Tensor | None = None   # the leader's last router probabilities



# --- the auxiliary losses, as plain functions of the routing -------------------------------
def switch_balance(probs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """E · Σ_e f_e · P_e (Switch Transformer, Fedus et al. 2022, eq. 4; with k choices per
    token as Mixtral / MixLoRA count them): f_e the fraction of tokens routed to expert e,
    P_e its mean router probability. k at a perfectly even split."""
    n_experts = probs.shape[-1]
    return n_experts * (chosen.float().mean(0) * probs.mean(0)).sum()


def localized_balance(gates: torch.Tensor, batch: int, row_types: torch.Tensor | None,
                      delta: float) -> torch.Tensor:
    """LoRAMoE's localized balancing constraint (Dou et al. 2024, sec. 3.2, eq. 7-8):
    Q (batch × E) each sample's importance per expert (its tokens' gates summed), I the
    group weights, 1 + δ where the expert's group is the sample's type and 1 − δ
    elsewhere, and the loss the squared coefficient of variation of Z = I ⊙ Q, as in the
    authors' code (`cv_squared`). Type 1: new-task data (first half of the experts);
    type 0: world-knowledge data (second half). Rows of unknown type count as type 1."""
    n_experts = gates.shape[-1]
    q = gates.reshape(batch, -1, n_experts).sum(1)
    types = (torch.ones(batch, dtype=torch.long, device=gates.device) if row_types is None
             else row_types.to(gates.device).long())
    task_expert = torch.arange(n_experts, device=gates.device) < n_experts // 2
    same = task_expert[None, :] == (types[:, None] == 1)
    z = (q * torch.where(same, 1.0 + delta, 1.0 - delta)).flatten()
    return z.var() / (z.mean() ** 2 + 1e-10)


def router_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the tokens' router distributions; log E when uniform."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()

