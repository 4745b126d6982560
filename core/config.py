"""`LoRAConfig`: the one typed description of an adapter.

Every field carries its help text in `metadata`, so the README, `--help` of the
CLIs and validation all read from one place (the PEFT `LoraConfig` habit); each
dataclass's docstring lists them too (`Args:`), which is where jsonargparse and
LightningCLI read a field's help.

The fields every method reads sit on `LoRAConfig` itself; a method's own options are
one dataclass per method, in the field named after it:

    LoRAConfig(method="mixture", mixture=MixtureOptions(n_experts=8, top_k=2))
    --model.adapter.method mixture --model.adapter.mixture.n_experts 4

The method names come from the registry (`lorakit.VARIANTS`, which hands them over with
`use_methods`), not from a list here. The flat keys of earlier versions (`n_experts=8`,
`allora_eta=0.5`, ...) are still read by the constructor and by `upgrade_flat_keys` (a
YAML block), with a DeprecationWarning that names the new key, still read as attributes,
and are still what adapter files hold (`to_dict` / `from_dict`), so files keep their
meaning for every lorakit that reads them.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from .errors import LoraKitError

# `LoRAConfig.method`'s type: rebound by `use_methods` to a Literal of the registered
# names, which is what jsonargparse reads (annotations are strings, evaluated on use)
Method = str
Router = Literal["topk", "dense"]
RouterScope = Literal["module", "block"]
ExpertCompute = Literal["dense", "gather"]
Init = Literal["kaiming", "gaussian"]
BATask = Literal["nlu", "nlg"]
CORE_FIELDS = ("rank", "alpha", "dropout", "rslora", "init", "targets", "method",
               "modules_to_save")

_METHODS: dict[str, str] = {}       # name -> summary, from the registry


def _documented(cls):
    """The dataclass's docstring with an `Args:` line per field, from its metadata help."""
    lines = [f"    {f.name}: {f.metadata['help']}" for f in dataclasses.fields(cls)]
    summary = (cls.__doc__ or "").split("\n\nArgs:\n")[0].strip()
    cls.__doc__ = f"{summary}\n\nArgs:\n" + "\n".join(lines) + "\n"
    return cls


def _one_of(owner: str, name: str, value, allowed) -> None:
    if value not in get_args(allowed):
        raise LoraKitError(f"{owner}.{name} must be one of {list(get_args(allowed))}, "
                           f"got {value!r}")


# --- the options of one method each ------------------------------------------------------
@_documented
@dataclass
class LoRASBOptions:
    """LoRA-SB's options (method 'lora_sb')."""

    init_lr: float = field(default=1e-4, metadata={
        "help": "Learning rate of the approximated first full fine-tuning step, "
                "dW = -init_lr * sign(mean gradient), Adam's first step (Ponkshe et al. 2024, "
                "sec. 4); use the run's learning rate."})

    def __post_init__(self) -> None:
        if self.init_lr <= 0:
            raise LoraKitError(f"LoRAConfig.lora_sb.init_lr must be > 0, got {self.init_lr}")


@_documented
@dataclass
class LoRAGAOptions:
    """LoRA-GA's options (method 'lora_ga')."""

    init_gamma: float = field(default=16.0, metadata={
        "help": "The stable-scale gamma; A and B are multiplied by d_out^(1/4) / sqrt(gamma) "
                "(Wang et al. 2024, sec. 3.3 and Algorithm 1)."})

    def __post_init__(self) -> None:
        if self.init_gamma <= 0:
            raise LoraKitError(f"LoRAConfig.lora_ga.init_gamma must be > 0, got "
                               f"{self.init_gamma}")


@_documented
@dataclass
class ALLoRAOptions:
    """ALLoRA's options (method 'allora')."""

    eta: float = field(default=1.0, metadata={
        "help": "Each row's gradient is multiplied by 1/sqrt(|row|^2 + 1/eta^2), so eta is "
                "the multiplier of a row at zero norm (B at init)."})

    def __post_init__(self) -> None:
        if self.eta <= 0:
            raise LoraKitError(f"LoRAConfig.allora.eta must be > 0, got {self.eta}")


@_documented
@dataclass
class GGPOOptions:
    """LoRA-GGPO's options (method 'ggpo')."""

    sigma: float = field(default=0.03, metadata={
        "help": "Weight of the adapted weight's row norm in the perturbation size."})
    beta: float = field(default=0.01, metadata={
        "help": "Weight of the squared gradient row norm in the perturbation size."})


@_documented
@dataclass
class BALoRAOptions:
    """BA-LoRA's options (method 'balora')."""

    task: BATask = field(default="nlu", metadata={
        "help": "Regularisers for 'nlu' outputs (logits of a classifier: normalised MSE, "
                "covariance, SVD) or 'nlg' outputs (token logits: KL, entropy, SVD)."})
    consistency: float = field(default=1e-4, metadata={
        "help": "lambda1: weight of the consistency term with the frozen base's outputs."})
    diversity: float = field(default=3e-4, metadata={
        "help": "lambda2: weight of the diversity term."})
    svd: float = field(default=1e-4, metadata={
        "help": "lambda3: weight of the SVD term (top-k share of the outputs' singular "
                "values)."})
    svd_k: int = field(default=3, metadata={
        "help": "k, how many top singular values the SVD term rewards."})

    def __post_init__(self) -> None:
        _one_of("LoRAConfig.balora", "task", self.task, BATask)
        if self.svd_k < 1:
            raise LoraKitError(f"LoRAConfig.balora.svd_k must be >= 1, got {self.svd_k}")


@_documented
@dataclass
class MixtureOptions:
    """A mixture of LoRA experts' options (method 'mixture')."""

    n_experts: int = field(default=8, metadata={
        "help": "LoRA experts per adapted module (each of rank r), unless expert_schedule or "
                "experts_per_layer gives a count per layer."})
    top_k: int = field(default=2, metadata={
        "help": "Router 'topk': experts each token uses (MixLoRA 2 of 8, Li et al. 2024; "
                "LLaVA-MoLE 1, Chen et al. 2024). Must not exceed any layer's experts."})
    router: Router = field(default="topk", metadata={
        "help": "'topk' (softmax router, each token's k most probable experts, their gates "
                "renormalised when k > 1) or 'dense' (every expert weighted by the softmax: "
                "LoRAMoE, Dou et al. 2024)."})
    router_scope: RouterScope = field(default="module", metadata={
        "help": "'module' (a router per adapted module) or 'block' (one router per depth "
                "layer: its first adapted module in model order routes each token, the "
                "layer's other adapted modules use the same choice, so an expert spans the "
                "block's matrices: MixLoRA's and LLaVA-MoLE's one router per FFN)."})
    expert_method: str = field(default="lora", metadata={
        "help": "The method of each expert: 'lora', 'dora' or 'ffa_lora' (any variant whose "
                "tensors are its own and that needs no training hook of its own); experts "
                "are stored stacked, one tensor per name."})
    expert_compute: ExpertCompute = field(default="dense", metadata={
        "help": "Plain-product experts: 'dense' (every expert's r-wide down projection in "
                "one matmul, unselected gates zero) or 'gather' (each token's k experts "
                "gathered, two batched matmuls over the selected ones only; router 'topk'). "
                "Same outputs; `benchmarks/studies/moe_step_cost.py` times both."})
    expert_schedule: str = field(default="", metadata={
        "help": "Experts per depth segment, e.g. '2,4,6,8' = 2 in the first quarter of the "
                "adapted layers ... 8 in the last (MoLA, Gao et al. 2024)."})
    experts_per_layer: list[int] = field(default_factory=list, metadata={
        "help": "An explicit expert count per adapted layer (a layer: the modules under one "
                "numbered block, e.g. encoder.layer.3); its length must equal the number of "
                "adapted layers."})
    router_aux_loss: float = field(default=0.01, metadata={
        "help": "Router 'topk': weight of the Switch load-balance loss E * sum_e f_e * P_e "
                "(Fedus et al. 2022, eq. 4; MixLoRA uses 0.01)."})
    lbc_weight: float = field(default=0.0, metadata={
        "help": "Weight of LoRAMoE's localized balancing constraint (its 'blc_weight'); "
                "experts split in two halves, new tasks and world knowledge; rows' data "
                "types via Adapters.row_types."})
    lbc_delta: float = field(default=0.1, metadata={
        "help": "LoRAMoE's delta ('blc_alpha'): importance weight 1+delta for an expert of "
                "the row's own group, 1-delta for the other group."})

    def __post_init__(self) -> None:
        _one_of("LoRAConfig.mixture", "router", self.router, Router)
        if self.n_experts < 1 or self.top_k < 1:
            raise LoraKitError(f"LoRAConfig.mixture.n_experts and top_k must be >= 1, got "
                               f"{self.n_experts} and {self.top_k}")
        if self.router_aux_loss < 0 or self.lbc_weight < 0 or not 0 <= self.lbc_delta < 1:
            raise LoraKitError("LoRAConfig.mixture.router_aux_loss and lbc_weight must be >= 0 "
                               f"and lbc_delta in [0, 1), got {self.router_aux_loss}, "
                               f"{self.lbc_weight}, {self.lbc_delta}")
        _one_of("LoRAConfig.mixture", "router_scope", self.router_scope, RouterScope)
        _one_of("LoRAConfig.mixture", "expert_compute", self.expert_compute, ExpertCompute)
        self.experts_per_layer = [int(n) for n in self.experts_per_layer]


@_documented
@dataclass
class L4QOptions:
    """L4Q's options (method 'l4q')."""

    bits: int = field(default=4, metadata={
        "help": "Bits of the integer codes W + s·B A is quantized to in training and export "
                "(2 to 8; the paper reports 4 and 3 bits, Jeon et al. 2024)."})
    group_size: int = field(default=64, metadata={
        "help": "Weights along a row sharing one learned step size and offset (a power of "
                "two; a row shorter than it is one group)."})

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise LoraKitError(f"LoRAConfig.l4q.bits must be in 2..8, got {self.bits}")
        if self.group_size < 2 or self.group_size & (self.group_size - 1):
            raise LoraKitError(f"LoRAConfig.l4q.group_size must be a power of two (32, 64, "
                               f"128), got {self.group_size}")


#: each group field of LoRAConfig and its dataclass
GROUPS: dict[str, type] = {"lora_sb": LoRASBOptions, "lora_ga": LoRAGAOptions,
                           "allora": ALLoRAOptions, "ggpo": GGPOOptions,
                           "balora": BALoRAOptions, "mixture": MixtureOptions,
                           "l4q": L4QOptions}

#: the flat keys of earlier versions (and of adapter files) -> (group, option)
FLAT: dict[str, tuple[str, str]] = {
    "init_lr": ("lora_sb", "init_lr"), "init_gamma": ("lora_ga", "init_gamma"),
    "allora_eta": ("allora", "eta"), "ggpo_sigma": ("ggpo", "sigma"),
    "ggpo_beta": ("ggpo", "beta"), "ba_task": ("balora", "task"),
    "ba_consistency": ("balora", "consistency"), "ba_diversity": ("balora", "diversity"),
    "ba_svd": ("balora", "svd"), "ba_svd_k": ("balora", "svd_k"),
    **{f.name: ("mixture", f.name) for f in dataclasses.fields(MixtureOptions)},
    "l4q_bits": ("l4q", "bits"), "l4q_group_size": ("l4q", "group_size"),
}


def use_methods(variants: Mapping[str, type]) -> None:
    """Take the method names (and each one's `summary`, for the help) from the registry;
    `lorakit.variants` calls it once, with `VARIANTS`."""
    global Method
    _METHODS.clear()
    _METHODS.update({name: getattr(cls, "summary", "") for name, cls in variants.items()})
    Method = Literal[tuple(_METHODS)]  # type: ignore[valid-type]
    help_ = LoRAConfig.__dataclass_fields__["method"].metadata["help"]
    described = " ".join(f"'{n}': {s}" for n, s in _METHODS.items())
    _METHOD_HELP["help"] = f"{help_.split(' One of:')[0]} One of: {described}"
    _documented(LoRAConfig)


# the method field's metadata (a read-only view of this dict), completed by use_methods
_METHOD_HELP = {"help": "The adapter method: a name registered in lorakit.VARIANTS."}


@dataclass
class LoRAConfig:
    """An adapter's settings: what every method reads, and each method's own options."""

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
    method: Method = field(default="lora", metadata=_METHOD_HELP)
    modules_to_save: list[str] = field(default_factory=list, metadata={
        "help": "Patterns of modules trained in full and saved with the adapter "
                "(a classification head, a new projection), as PEFT's modules_to_save."})
    base_quantization: str | None = field(default=None, metadata={
        "help": "Quantize the targeted nn.Linear base modules before the adapter is attached "
                "(QLoRA, Dettmers et al. 2023): 'nf4' or 'fp4' (bitsandbytes), 'int2', "
                "'int3', 'int4' or 'int8' (HQQ), with an optional group size ('int4-g128'; "
                "default 64). The base stays frozen in that precision, the adapter trains "
                "in full precision; a module whose in_features the group size does not "
                "divide stays in full precision. None: the base as it is. Needs pip "
                "install 'lorakit[compressed]'."})
    lora_sb: LoRASBOptions = field(default_factory=LoRASBOptions, metadata={
        "help": "Options of method 'lora_sb' (LoRA-SB)."})
    lora_ga: LoRAGAOptions = field(default_factory=LoRAGAOptions, metadata={
        "help": "Options of method 'lora_ga' (LoRA-GA)."})
    allora: ALLoRAOptions = field(default_factory=ALLoRAOptions, metadata={
        "help": "Options of method 'allora' (ALLoRA)."})
    ggpo: GGPOOptions = field(default_factory=GGPOOptions, metadata={
        "help": "Options of method 'ggpo' (LoRA-GGPO)."})
    balora: BALoRAOptions = field(default_factory=BALoRAOptions, metadata={
        "help": "Options of method 'balora' (BA-LoRA)."})
    mixture: MixtureOptions = field(default_factory=MixtureOptions, metadata={
        "help": "Options of method 'mixture' (mixtures of LoRA experts)."})
    l4q: L4QOptions = field(default_factory=L4QOptions, metadata={
        "help": "Options of method 'l4q' (L4Q, quantization-aware LoRA)."})

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise LoraKitError(f"LoRAConfig.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise LoraKitError(f"LoRAConfig.dropout must be in [0, 1), got {self.dropout}")
        if _METHODS and self.method not in _METHODS:
            raise LoraKitError(f"LoRAConfig.method must be one of {list(_METHODS)}, "
                               f"got {self.method!r}")
        _one_of("LoRAConfig", "init", self.init, Init)
        for name, cls in GROUPS.items():       # a dict from YAML or from_dict
            value = getattr(self, name)
            if isinstance(value, Mapping):
                setattr(self, name, cls(**value))
        moe = self.mixture
        if (self.method == "mixture" and moe.router == "topk" and moe.top_k > moe.n_experts
                and not (moe.expert_schedule or moe.experts_per_layer)):
            raise LoraKitError(f"LoRAConfig.mixture.top_k={moe.top_k} exceeds n_experts="
                               f"{moe.n_experts}: a token cannot use more experts than exist")
        if self.method == "mixture" and moe.expert_compute == "gather" and moe.router != "topk":
            raise LoraKitError("LoRAConfig.mixture.expert_compute='gather' picks each token's "
                               "top_k experts; router 'dense' uses every expert: use "
                               "expert_compute='dense'")
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if not self.targets:
            raise LoraKitError("LoRAConfig.targets is empty: name at least one module pattern")
        self.targets = list(self.targets)
        self.modules_to_save = list(self.modules_to_save)
        if self.base_quantization is not None:     # torch is imported only when asked for
            from .layers.quantized import QuantSpec

            self.base_quantization = str(QuantSpec.parse(self.base_quantization))

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def to_dict(self) -> dict:
        """The file's form: the fields every adapter has, and each method option under its
        flat key only where it differs from its default, so a plain LoRA file reads in a
        lorakit that predates a method's options and every file reads in earlier ones.
        `base_quantization` is not among them: the file records each adapted base's
        precision itself (its `quantization` entry), and loading never quantizes a base."""
        data = {k: copy.deepcopy(getattr(self, k)) for k in CORE_FIELDS
                if k != "modules_to_save"}
        defaults = LoRAConfig()
        for key in FLAT:
            value = getattr(self, key)
            if value != getattr(defaults, key):
                data[key] = copy.deepcopy(value)
        data["modules_to_save"] = list(self.modules_to_save)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> LoRAConfig:
        """The config a dict describes (a file's flat keys, or the grouped form); a key this
        lorakit does not know is refused, by name (dropping it would load the adapter with
        a setting silently lost)."""
        known = [*cls.__dataclass_fields__, *FLAT]
        unknown = [k for k in data if k not in known]
        if unknown:
            raise LoraKitError(f"unknown adapter config key {unknown[0]!r} (known: "
                               f"{', '.join(known)}); it was written by "
                               "another lorakit version or edited")
        flat = {k: data[k] for k in data if k in FLAT}
        return cls(**_grouped({k: v for k, v in data.items() if k not in FLAT}, flat))


def _grouped(kwargs: dict, flat: dict) -> dict:
    """`kwargs` with the flat option keys `flat` put into their groups."""
    kwargs = dict(kwargs)
    updates: dict[str, dict] = {}
    for key, value in flat.items():
        group, name = FLAT[key]
        updates.setdefault(group, {})[name] = value
    for group, values in updates.items():
        base = kwargs.get(group)
        kwargs[group] = ({**base, **values} if isinstance(base, Mapping) else
                         dataclasses.replace(base or GROUPS[group](), **values))
    return kwargs


def upgrade_flat_keys(data: Mapping, source: str = "adapter config") -> dict:
    """A config dict (a YAML file's `adapter:` block) with the flat keys of earlier versions
    moved into their groups, each with a DeprecationWarning naming the new key; for glue that
    hands YAML to jsonargparse, which knows only the grouped keys."""
    flat = {k: v for k, v in data.items() if k in FLAT}
    for key in flat:
        group, name = FLAT[key]
        warnings.warn(f"{source}: the key {key!r} is deprecated: use {group}.{name} "
                      f"({group}: {{{name}: ...}} in YAML, --...{group}.{name} on the command "
                      "line)", DeprecationWarning, stacklevel=2)
    rest = {k: v for k, v in data.items() if k not in FLAT}
    upgraded = _grouped(rest, flat)
    return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
            for k, v in upgraded.items()}


def _flat_alias(key: str) -> property:
    group, name = FLAT[key]

    def get(self):
        return getattr(getattr(self, group), name)

    def put(self, value) -> None:
        setattr(getattr(self, group), name, value)
    return property(get, put, doc=f"The same as `{group}.{name}` (the flat key of earlier "
                                  "versions and of adapter files).")


def _accept_flat_keys(init):
    """The generated `__init__`, also taking the flat keys, each with a DeprecationWarning
    naming its new place (`n_experts=8` -> `mixture=MixtureOptions(n_experts=8)`)."""
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        flat = {k: kwargs.pop(k) for k in list(kwargs) if k in FLAT}
        for key in flat:
            group, name = FLAT[key]
            warnings.warn(f"LoRAConfig({key}=...) is deprecated: use LoRAConfig({group}="
                          f"{GROUPS[group].__name__}({name}=...)), or the key "
                          f"{group}.{name} in YAML and on the command line",
                          DeprecationWarning, stacklevel=2)
        init(self, *args, **_grouped(kwargs, flat))
    return __init__


LoRAConfig.__init__ = _accept_flat_keys(LoRAConfig.__init__)
for _key in FLAT:
    setattr(LoRAConfig, _key, _flat_alias(_key))
_documented(LoRAConfig)
