"""`LoRAConfig`: the one typed description of an adapter.

Every field carries its help text in `metadata`, so the README, `--help` of the
CLIs and validation all read from one place (the PEFT `LoraConfig` habit).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

from .errors import LoraKitError

Method = Literal["lora", "s2lora", "dora", "ffa_lora", "lora_sb", "lora_ga", "allora", "ggpo",
                 "balora", "mixture"]
Router = Literal["topk", "dense"]
RouterScope = Literal["module", "block"]
ExpertCompute = Literal["dense", "gather"]
Init = Literal["kaiming", "gaussian"]
BATask = Literal["nlu", "nlg"]
CORE_FIELDS = ("rank", "alpha", "dropout", "rslora", "init", "targets", "method",
               "modules_to_save")


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
                "Wang et al. 2024). 'allora': "
                "LoRA without dropout or alpha/r, each factor row's gradient scaled by "
                "1/sqrt(|row|^2 + 1/allora_eta^2) (ALLoRA, Huang & Balestriero 2024). "
                "'ggpo': LoRA trained at weights perturbed by noise sized from weight and "
                "gradient norms (LoRA-GGPO, Chang et al. 2025). 'balora': LoRA with "
                "consistency, diversity and SVD regularisers on the model's outputs "
                "(BA-LoRA, Chang et al. 2024). 'mixture': n_experts LoRA experts of rank r "
                "per module and a token-level router (MixLoRA, LLaVA-MoLE, LoRAMoE, MoLA; see "
                "n_experts, top_k, router)."})
    init_lr: float = field(default=1e-4, metadata={
        "help": "lora_sb: learning rate of the approximated first full fine-tuning step, "
                "dW = -init_lr * sign(mean gradient), Adam's first step (Ponkshe et al. 2024, "
                "sec. 4); use the run's learning rate."})
    init_gamma: float = field(default=16.0, metadata={
        "help": "lora_ga: the stable-scale gamma; A and B are multiplied by "
                "d_out^(1/4) / sqrt(gamma) (Wang et al. 2024, sec. 3.3 and Algorithm 1)."})
    allora_eta: float = field(default=1.0, metadata={
        "help": "ALLoRA's eta: each row's gradient is multiplied by 1/sqrt(|row|^2 + "
                "1/eta^2), so eta is the multiplier of a row at zero norm (B at init)."})
    ggpo_sigma: float = field(default=0.03, metadata={
        "help": "LoRA-GGPO: weight of the adapted weight's row norm in the perturbation size."})
    ggpo_beta: float = field(default=0.01, metadata={
        "help": "LoRA-GGPO: weight of the squared gradient row norm in the perturbation size."})
    ba_task: BATask = field(default="nlu", metadata={
        "help": "BA-LoRA regularisers for 'nlu' outputs (logits of a classifier: normalised "
                "MSE, covariance, SVD) or 'nlg' outputs (token logits: KL, entropy, SVD)."})
    ba_consistency: float = field(default=1e-4, metadata={
        "help": "BA-LoRA lambda1: weight of the consistency term with the frozen base's outputs."})
    ba_diversity: float = field(default=3e-4, metadata={
        "help": "BA-LoRA lambda2: weight of the diversity term."})
    ba_svd: float = field(default=1e-4, metadata={
        "help": "BA-LoRA lambda3: weight of the SVD term (top-k share of the outputs' "
                "singular values)."})
    ba_svd_k: int = field(default=3, metadata={
        "help": "BA-LoRA: k, how many top singular values the SVD term rewards."})
    n_experts: int = field(default=8, metadata={
        "help": "mixture: LoRA experts per adapted module (each of rank r), unless "
                "expert_schedule or experts_per_layer gives a count per layer."})
    top_k: int = field(default=2, metadata={
        "help": "mixture, router 'topk': experts each token uses (MixLoRA 2 of 8, Li et al. "
                "2024; LLaVA-MoLE 1, Chen et al. 2024). Must not exceed any layer's experts."})
    router: Router = field(default="topk", metadata={
        "help": "mixture: 'topk' (softmax router, each token's k most probable experts, "
                "their gates renormalised when k > 1) or 'dense' (every expert weighted by "
                "the softmax: LoRAMoE, Dou et al. 2024)."})
    router_scope: RouterScope = field(default="module", metadata={
        "help": "mixture: 'module' (a router per adapted module) or 'block' (one router per "
                "depth layer: its first adapted module in model order routes each token, "
                "the layer's other adapted modules use the same choice, so an expert spans "
                "the block's matrices: MixLoRA's and LLaVA-MoLE's one router per FFN)."})
    expert_method: str = field(default="lora", metadata={
        "help": "mixture: the method of each expert: 'lora', 'dora' or 'ffa_lora' (any "
                "variant whose tensors are its own and that needs no training hook of its "
                "own); experts are stored stacked, one tensor per name."})
    expert_compute: ExpertCompute = field(default="dense", metadata={
        "help": "mixture, plain-product experts: 'dense' (every expert's r-wide down "
                "projection in one matmul, unselected gates zero) or 'gather' (each token's "
                "k experts gathered, two batched matmuls over the selected ones only; "
                "router 'topk'). Same outputs; `benchmarks/moe_step_cost.py` times both."})
    expert_schedule: str = field(default="", metadata={
        "help": "mixture: experts per depth segment, e.g. '2,4,6,8' = 2 in the first "
                "quarter of the adapted layers ... 8 in the last (MoLA, Gao et al. 2024)."})
    experts_per_layer: list[int] = field(default_factory=list, metadata={
        "help": "mixture: an explicit expert count per adapted layer (a layer: the modules "
                "under one numbered block, e.g. encoder.layer.3); its length must equal the "
                "number of adapted layers."})
    router_aux_loss: float = field(default=0.01, metadata={
        "help": "mixture, router 'topk': weight of the Switch load-balance loss "
                "E * sum_e f_e * P_e (Fedus et al. 2022, eq. 4; MixLoRA uses 0.01)."})
    lbc_weight: float = field(default=0.0, metadata={
        "help": "mixture: weight of LoRAMoE's localized balancing constraint (its "
                "'blc_weight'); experts split in two halves, new tasks and world knowledge; "
                "rows' data types via Adapters.row_types."})
    lbc_delta: float = field(default=0.1, metadata={
        "help": "mixture: LoRAMoE's delta ('blc_alpha'): importance weight 1+delta for an "
                "expert of the row's own group, 1-delta for the other group."})
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
        if self.ba_task not in get_args(BATask):
            raise LoraKitError(f"LoRAConfig.ba_task must be one of {list(get_args(BATask))}, "
                               f"got {self.ba_task!r}")
        if self.allora_eta <= 0 or self.ba_svd_k < 1:
            raise LoraKitError("LoRAConfig.allora_eta must be > 0 and ba_svd_k >= 1, got "
                               f"{self.allora_eta} and {self.ba_svd_k}")
        if self.router not in get_args(Router):
            raise LoraKitError(f"LoRAConfig.router must be one of {list(get_args(Router))}, "
                               f"got {self.router!r}")
        if self.n_experts < 1 or self.top_k < 1:
            raise LoraKitError(f"LoRAConfig.n_experts and top_k must be >= 1, got "
                               f"{self.n_experts} and {self.top_k}")
        if (self.method == "mixture" and self.router == "topk" and self.top_k > self.n_experts
                and not (self.expert_schedule or self.experts_per_layer)):
            raise LoraKitError(f"LoRAConfig.top_k={self.top_k} exceeds n_experts="
                               f"{self.n_experts}: a token cannot use more experts than exist")
        if self.router_aux_loss < 0 or self.lbc_weight < 0 or not 0 <= self.lbc_delta < 1:
            raise LoraKitError("LoRAConfig.router_aux_loss and lbc_weight must be >= 0 and "
                               f"lbc_delta in [0, 1), got {self.router_aux_loss}, "
                               f"{self.lbc_weight}, {self.lbc_delta}")
        if self.router_scope not in get_args(RouterScope):
            raise LoraKitError(f"LoRAConfig.router_scope must be one of "
                               f"{list(get_args(RouterScope))}, got {self.router_scope!r}")
        if self.expert_compute not in get_args(ExpertCompute):
            raise LoraKitError(f"LoRAConfig.expert_compute must be one of "
                               f"{list(get_args(ExpertCompute))}, got {self.expert_compute!r}")
        if self.method == "mixture" and self.expert_compute == "gather" and self.router != "topk":
            raise LoraKitError("LoRAConfig.expert_compute='gather' picks each token's top_k "
                               "experts; router 'dense' uses every expert: use "
                               "expert_compute='dense'")
        self.experts_per_layer = [int(n) for n in self.experts_per_layer]
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
        """The fields every adapter has, and the others only where they differ from their
        default: a plain LoRA file then reads in a lorakit that predates a method's options."""
        data = asdict(self)
        defaults = LoRAConfig()
        return {k: v for k, v in data.items()
                if k in CORE_FIELDS or v != getattr(defaults, k)}

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
