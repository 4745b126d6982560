"""Adapter methods, one class each under one protocol (`base.Variant`).

Adding a method: one file here with its `Variant` subclass, one line in `VARIANTS`,
its name in `LoRAConfig.method`, and its tests.
"""
from __future__ import annotations

from ..errors import LoraKitError
from .allora import ALLoRA
from .balora import BALoRA
from .base import Variant, adapter_dtype
from .dora import DoRA
from .ffa_lora import FFALoRA
from .ggpo import GGPO
from .lora import LoRA
from .lora_ga import LoRAGA
from .lora_sb import LoRASB
from .mixture import Mixture
from .s2lora import S2LoRA, SharedBasis

VARIANTS: dict[str, type[Variant]] = {v.method: v for v in (
    LoRA, S2LoRA, DoRA, FFALoRA, LoRASB, LoRAGA, ALLoRA, GGPO, BALoRA, Mixture)}


def variant_named(method: str, source: str = "adapter") -> type[Variant]:
    if method not in VARIANTS:
        raise LoraKitError(f"{source}: unknown adapter method {method!r}; this lorakit knows "
                           f"{', '.join(VARIANTS)}")
    return VARIANTS[method]


__all__ = ["ALLoRA", "BALoRA", "DoRA", "FFALoRA", "GGPO", "LoRA", "LoRAGA", "LoRASB", "Mixture",
           "S2LoRA", "SharedBasis", "VARIANTS", "Variant", "adapter_dtype", "variant_named"]
