"""`LoRAConfig`: the one typed description of an adapter.

Every field carries its help text in `metadata`, so the README, `--help` of the
CLIs and validation all read from one place (the PEFT `LoraConfig` habit).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

from .errors import LoraKitError

Method = Literal["lora", "s2lora", "dora", "ffa_lora", "lora_sb", "lora_ga"]
Init = Literal["kaiming", "gaussian"]


@dataclass
class LoRAConfig:
    rank: int = field(default=8, metadata={"help": "Rank r of the update B·A."})
    alpha: float = field(default=16.0, metadata={
        "help": "Scaling numerator: the update is multiplied by alpha/r "
                "(Hu et al. 2021, sec. 4.1), or alpha/sqrt(r) with rslora."})
    dropout: float = field(default=0.0, metadata={
        "help": "Dropout on the adapter input (not on the base path)."})
    rslora: bool = field(default=False, metadata={
        "help": "Rank-stabilised scale alpha/sqrt(r) (Kalajdzievski 2023)."})
    init: Init = field(default="kaiming", metadata={
        "help": "Initialisation of A: 'kaiming' (uniform, as nn.Linear) or 'gaussian' "
                "(std 1/r). B starts at zero, so the adapted model starts equal to the base."})
    targets: list[str] = field(default_factory=lambda: ["*.query", "*.value"], metadata={
        "help": "Glob patterns on module paths ('*.query', 'encoder.*.attn.*'); a pattern "
                "without a dot also matches the last path component ('query')."})
    method: Method = field(default="lora", metadata={
        "help": "'lora': one A, B per matrix. 's2lora': A and B shared by all adapted "
                "matrices of one shape, each matrix keeps a rank-coefficient vector "
                "lambda, dW_i = B diag(lambda_i) A (S2-LoRA, Liu et al. 2025). "
                "'dora': a trained magnitude per output row times the direction W + BA, "
                "normalised (DoRA, Liu et al. 2024). "
                "'ffa_lora': A frozen at its random init, only B trains (FFA-LoRA, Sun et "
                "al. 2024). "
                "'lora_sb': dW = B R A with A, B fixed and only the r x r R trained, set by "
                "lorakit.init_from_gradients (LoRA-SB, Ponkshe et al. 2024). "
                "'lora_ga': A, B from the SVD of the full gradient "
                "(lorakit.init_from_gradients), the output unchanged at step 0 (LoRA-GA, "
                "Wang et al. 2024)."})
    init_lr: float = field(default=1e-4, metadata={
        "help": "lora_sb: learning rate of the approximated first full fine-tuning step, "
                "dW = -init_lr * sign(mean gradient), Adam's first step (Ponkshe et al. 2024, "
                "sec. 4); use the run's learning rate."})
    init_gamma: float = field(default=16.0, metadata={
        "help": "lora_ga: the stable-scale gamma; A and B are multiplied by "
                "d_out^(1/4) / sqrt(gamma) (Wang et al. 2024, sec. 3.3 and Algorithm 1)."})
    modules_to_save: list[str] = field(default_factory=list, metadata={
        "help": "Patterns of modules trained in full and saved with the adapter "
                "(a classification head, a new projection), as PEFT's modules_to_save."})

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise LoraKitError(f"LoRAConfig.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise LoraKitError(f"LoRAConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.method not in get_args(Method):
            raise LoraKitError(f"LoRAConfig.method must be one of {list(get_args(Method))}, "
                               f"got {self.method!r}")
        for positive in ("init_lr", "init_gamma"):
            if getattr(self, positive) <= 0:
                raise LoraKitError(f"LoRAConfig.{positive} must be > 0, got "
                                   f"{getattr(self, positive)}")
        if self.init not in get_args(Init):
            raise LoraKitError(f"LoRAConfig.init must be one of {list(get_args(Init))}, "
                               f"got {self.init!r}")
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if not self.targets:
            raise LoraKitError("LoRAConfig.targets is empty: name at least one module pattern")
        self.targets = list(self.targets)
        self.modules_to_save = list(self.modules_to_save)

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LoRAConfig:
        """The config a dict describes; a key this lorakit does not know is refused, by name
        (dropping it would load the adapter with a setting silently lost)."""
        unknown = [k for k in data if k not in cls.__dataclass_fields__]
        if unknown:
            raise LoraKitError(f"unknown adapter config key {unknown[0]!r} (known: "
                               f"{', '.join(cls.__dataclass_fields__)}); it was written by "
                               "another lorakit version or edited")
        return cls(**data)
