"""Mixtures of LoRA experts (MixLoRA, LLaVA-MoLE, LoRAMoE, MoLA: `mixture.Mixture`, one
method configured by `LoRAConfig`) and X-LoRA (`xlora.XLoRA`, a scaling head over frozen
named adapters).

    experts.py   which methods an expert can be; the stacked compute (mixed, gathered)
    routers.py   expert counts per layer (MoLA), the block router, balance losses, entropy
    mixture.py   the `Mixture` variant: experts + router on one module
    xlora.py     X-LoRA's two-pass scaling head; not imported here, since it reaches the
                 handle (`lorakit.XLoRA`, or `lorakit.variants.mixture.xlora`)
"""
from .experts import EXPERTS, expert_class, gathered, mixed
from .mixture import NOT_A_PRODUCT, Mixture
from .routers import (
    BlockRouter,
    allocation,
    layer_key,
    localized_balance,
    parse_schedule,
    router_entropy,
    router_key,
    switch_balance,
)

__all__ = ["EXPERTS", "NOT_A_PRODUCT", "BlockRouter", "Mixture", "allocation",
           "expert_class", "gathered", "layer_key", "localized_balance", "mixed",
           "parse_schedule", "router_entropy", "router_key", "switch_balance"]
