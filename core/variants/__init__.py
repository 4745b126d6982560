"""Adapter methods, one class each under one protocol (`base.Variant`).

    base.py       the required verbs: tensors, factors / forward, delta, merge / unmerge
    file.py       the file-tensor side: file keys, ΔW and PEFT's layout from file tensors
    optional.py   the optional protocols: shared tensors, gradient init, loss terms,
                  training hooks, router, prunable
    mixture/      mixtures of LoRA experts and X-LoRA

Adding a method: one file here with its `Variant` subclass and one line in `VARIANTS`
(`LoRAConfig.method` reads the registry); `tests/core/test_method_contract.py` covers it
on every layer kind from that line alone.
"""
from __future__ import annotations

from ..config import use_methods
from ..errors import LoraKitError
from .allora import ALLoRA
from .balora import BALoRA
from .base import Variant, adapter_dtype
from .dora import DoRA
from .ffa_lora import FFALoRA
from .file import VariantFile
from .ggpo import GGPO
from .l4q import L4Q
from .lora import LoRA
from .lora_ga import LoRAGA
from .lora_sb import LoRASB
from .mixture import Mixture
from .optional import (
    OPTIONAL,
    GradientInit,
    LossTerms,
    Prunable,
    Router,
    SharedTensors,
    TrainingHooks,
    implements,
)
from .s2lora import S2LoRA, SharedBasis

VARIANTS: dict[str, type[Variant]] = {v.method: v for v in (
    LoRA, S2LoRA, DoRA, FFALoRA, LoRASB, LoRAGA, ALLoRA, GGPO, BALoRA, Mixture, L4Q)}
use_methods(VARIANTS)      # LoRAConfig.method: these names, its help their summaries


def variant_named(method: str, source: str = "adapter") -> type[Variant]:
    if method not in VARIANTS:
        raise LoraKitError(f"{source}: unknown adapter method {method!r}; this lorakit knows "
                           f"{', '.join(VARIANTS)}")
    return VARIANTS[method]


__all__ = ["OPTIONAL", "VARIANTS", "ALLoRA", "BALoRA", "DoRA", "FFALoRA", "GGPO", "GradientInit",
           "L4Q", "LoRA", "LoRAGA", "LoRASB", "LossTerms", "Mixture", "Prunable", "Router", "S2LoRA",
           "SharedBasis", "SharedTensors", "TrainingHooks", "Variant", "VariantFile",
           "adapter_dtype", "implements", "variant_named"]
