r"""Structured pruning of transformers models: fewer heads, fewer MLP channels, same model class.

    scores = unit_scores(model, "loraprune", batches=...)      # importance.py
    report = prune(model, scores, PruneSpec(ratio=0.5))         # this file
    model.save_pretrained("pruned/")                            # loads back with from_pretrained

`prune` removes, in every block, the lowest-scoring attention heads and MLP channels by
slicing the `nn.Linear` weights (q/k/v rows and o columns of a head; gate/up rows and
down columns of a channel, `structure.py`), sets the attributes the modules' forwards
read (`num_key_value_groups`, BERT's `num_attention_heads` / `all_head_size`) and the
config, and slices the lorakit adapters sitting on those modules the same way: LoRA's
A loses the columns and B the rows of the base weight they sit on, so the pruned
model with its adapter is exactly the full model with those units cut out. The same
`nn.Parameter` objects are kept (their `.data` is replaced), so an optimizer built
over the adapters stays valid; its per-parameter state (Adam's moments) is sliced the
same way when it is handed in (`optimizers=`).

Why direct slicing and not torch-pruning (`torch-pruning==1.6.1`): the config is the
hard part and torch-pruning does not touch it. Its dependency graph finds the
coupled rows and columns by tracing the forward, which it does for nn.Linear modules
but not for lorakit's adapters (F.linear on plain parameters) and only through
transformers' attention if the tracer follows its interface indirection; after
pruning, its Hugging Face examples patch `model.config` by hand and save the whole
pickled module. Here the coupling of a head or a channel is fixed by the
architecture and three lines per family say it (`structure.py`), so slicing is
shorter than configuring the tracer, exact, and leaves a model that
`save_pretrained` / `from_pretrained` round-trip without pickles.

Uniform per block, so the config describes every layer: each block keeps the same
number of query heads, KV heads and channels, the lowest-scoring ones of its own.

    config field           Llama-style (SmolLM2)              BERT (MiniLM)
    num_attention_heads    kept query heads                   unchanged: see below
    num_key_value_heads    kept KV heads
    head_dim               unchanged, written out explicitly  (hidden / heads, fixed)
    intermediate_size      kept channels                      kept channels
    pruned_heads           -                                  {block: [removed heads]}

Grouped-query attention (`PruneSpec.gqa`): "groups" (the default) removes whole KV
groups, a KV head with the query heads that read it, so the model stays GQA with the
same group size and its KV cache and k/v projections shrink in proportion; "queries"
keeps every KV head and removes the same number of query heads from each group (a
finer grain, but k/v and the KV cache stay full size). In a multi-head model (one
query head per KV head) both are head pruning. transformers' Llama config refuses a
hidden size that is not a multiple of `num_attention_heads` (its `validate_architecture`,
even with `head_dim` given), so the kept head count is the nearest one at or above the
asked-for count that it accepts; the report says what was kept.

BERT has no config field for a head count apart from its head size (head size =
hidden / num_attention_heads in `BertSelfAttention`) and transformers 5 dropped
`prune_heads`, so a head-pruned BERT keeps `num_attention_heads` and records the
removed heads in `config.pruned_heads` (the field transformers 4 read back on load);
`from_pretrained` refuses its smaller q/k/v/o weights, and `load_pruned` loads it.
A channel-pruned BERT round-trips through `from_pretrained` itself.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from ..errors import LoraKitError
from ..layers import LoRALayer
from .structure import Block, blocks, channel_count, head_counts, linear

if TYPE_CHECKING:
    from .importance import UnitScores

GQA = Literal["groups", "queries"]
_PLAIN = {"lora_A", "lora_B"}   # the adapter tensors pruning can slice (plain LoRA factors)


@dataclass
class PruneSpec:
    """How much to prune, of which units.

    Args:
        ratio: fraction of the units removed in every block (0.5: half the heads and half
            the channels).
        heads: prune attention heads.
        channels: prune MLP channels.
        head_ratio: the heads' own fraction (default: `ratio`).
        channel_ratio: the channels' own fraction (default: `ratio`).
        gqa: with grouped-query attention, "groups" removes whole KV groups (a KV head and
            its query heads), "queries" keeps every KV head and removes the same number of
            query heads from each group.
    """

    ratio: float = field(default=0.5, metadata={
        "help": "fraction of the units removed in every block"})
    heads: bool = field(default=True, metadata={"help": "prune attention heads"})
    channels: bool = field(default=True, metadata={"help": "prune MLP channels"})
    head_ratio: float | None = field(default=None, metadata={
        "help": "the heads' own fraction (default: ratio)"})
    channel_ratio: float | None = field(default=None, metadata={
        "help": "the channels' own fraction (default: ratio)"})
    gqa: GQA = field(default="groups", metadata={
        "help": "GQA: 'groups' removes whole KV groups, 'queries' the same number of query "
                "heads from each group"})

    def __post_init__(self) -> None:
        for name in ("ratio", "head_ratio", "channel_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise LoraKitError(f"PruneSpec.{name} must be in [0, 1), got {value!r}")
        if self.gqa not in ("groups", "queries"):
            raise LoraKitError(f"PruneSpec.gqa must be 'groups' or 'queries', got {self.gqa!r}")

    @property
    def heads_ratio(self) -> float:
        return self.ratio if self.head_ratio is None else self.head_ratio

    @property
    def channels_ratio(self) -> float:
        return self.ratio if self.channel_ratio is None else self.channel_ratio


def keep_count(units: int, ratio: float) -> int:
    """Units kept of `units` when a fraction `ratio` goes: rounded, at least one."""
    return max(1, min(units, round(units * (1.0 - ratio))))


@dataclass
class PruneReport:
    """What `prune` did: counts per block before and after, sizes, and the kept-index map.

    `kept[path]` gives, for every module whose weight changed, the rows ("rows", output
    features) and columns ("cols", input features) it kept, as indices into its weight
    before pruning, and `shapes[path]` that weight's (out, in) before: all that is needed
    to put a tensor of the pruned module back into the full one (LoRAM's recovery).
    After several prunes, `first.then(second)` maps the final model to the first one.
    """

    family: str
    blocks: int
    heads_before: int              # query heads per block
    heads_after: int
    kv_heads_before: int
    kv_heads_after: int
    channels_before: int           # MLP channels per block
    channels_after: int
    params_before: int             # base parameters (adapters not counted)
    params_after: int
    bytes_before: int
    bytes_after: int
    kept: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    kept_heads: dict[int, list[int]] = field(default_factory=dict)
    kept_kv_heads: dict[int, list[int]] = field(default_factory=dict)
    kept_channels: dict[int, list[int]] = field(default_factory=dict)

    @property
    def params_removed(self) -> float:
        """Fraction of the base parameters removed."""
        return 1.0 - self.params_after / max(self.params_before, 1)

    def summary(self) -> dict:
        """The counts and sizes, without the index maps (a results.json row)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("kept", "shapes", "kept_heads", "kept_kv_heads", "kept_channels")}

    def then(self, later: PruneReport) -> PruneReport:
        """This prune followed by `later` (pruning the model this one left), as one."""
        kept = {p: dict(v) for p, v in self.kept.items()}
        for path, idx in later.kept.items():
            mine = kept.get(path)
            kept[path] = idx if mine is None else {
                d: [mine[d][i] for i in idx[d]] for d in ("rows", "cols")}
        shapes = {**later.shapes, **self.shapes}

        def chain(a: dict[int, list[int]], b: dict[int, list[int]]) -> dict[int, list[int]]:
            return {**a, **{i: [a[i][j] for j in v] if i in a else v for i, v in b.items()}}
        return PruneReport(
            self.family, self.blocks, self.heads_before, later.heads_after,
            self.kv_heads_before, later.kv_heads_after, self.channels_before,
            later.channels_after, self.params_before, later.params_after, self.bytes_before,
            later.bytes_after, kept, shapes, chain(self.kept_heads, later.kept_heads),
            chain(self.kept_kv_heads, later.kept_kv_heads),
            chain(self.kept_channels, later.kept_channels))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PruneReport:
        data = dict(data)
        for key in ("kept_heads", "kept_kv_heads", "kept_channels"):
            data[key] = {int(k): v for k, v in data.get(key, {}).items()}
        return cls(**data)

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path) -> PruneReport:
        return cls.from_dict(json.loads(Path(path).read_text()))


# --- sizes ----------------------------------------------------------------------------
def base_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The model's parameters without lorakit adapters' (tied weights once)."""
    from ..variants import Variant

    adapter = {id(p) for m in model.modules() if isinstance(m, Variant) for p in m.parameters()}
    return [p for p in model.parameters() if id(p) not in adapter]


def size(model: nn.Module) -> tuple[int, int]:
    """(parameters, bytes) of the base model, adapters not counted."""
    params = base_parameters(model)
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


# --- slicing --------------------------------------------------------------------------
def _head_rows(heads: Sequence[int], d: int) -> torch.Tensor:
    return torch.tensor([h * d + i for h in heads for i in range(d)], dtype=torch.long)


@torch.no_grad()
def _take(param: nn.Parameter, dim: int, index: torch.Tensor,
          optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """`param` keeps `index` along `dim` in place (same Parameter object), with its grad and
    any optimizer state of its shape (Adam's moments)."""
    old = tuple(param.shape)
    index = index.to(param.device)
    param.data = param.data.index_select(dim, index).contiguous()
    if param.grad is not None:
        param.grad = param.grad.index_select(dim, index).contiguous()
    for opt in optimizers:
        state = opt.state.get(param)
        for key, value in (state or {}).items():
            if torch.is_tensor(value) and tuple(value.shape) == old:
                state[key] = value.index_select(dim, index.to(value.device)).contiguous()


def _check_adapters(model: nn.Module, path: str) -> LoRALayer | None:
    """The `LoRALayer` at `path` (None if the module carries no adapter), or an error when
    one of its adapters cannot be sliced."""
    layer = model.get_submodule(path)
    if not isinstance(layer, LoRALayer):
        return None
    if layer.merged:
        raise LoraKitError(f"prune: module {path!r} has adapters {list(layer.merged)} merged "
                           "into its weight; unmerge() them before pruning")
    for name, variant in layer.variants.items():
        own = set(variant.own_tensors())
        if own != _PLAIN or variant.shared_tensors():
            raise LoraKitError(
                f"prune: adapter {name!r} on module {path!r} is method {variant.method!r} "
                f"(tensors {sorted(own)}); pruning slices plain LoRA factors (lora_A, lora_B) "
                "only. Prune before attaching it, or detach it")
    return layer


def _slice_module(model: nn.Module, path: str, rows: torch.Tensor | None,
                  cols: torch.Tensor | None, optimizers) -> None:
    """Keep `rows` (output features) and `cols` (input features) of the Linear at `path`, and
    of the plain-LoRA adapters on it: B's rows, A's columns."""
    lin = linear(model, path)
    layer = _check_adapters(model, path)
    if rows is not None:
        _take(lin.weight, 0, rows, optimizers)
        if lin.bias is not None:
            _take(lin.bias, 0, rows, optimizers)
        lin.out_features = int(rows.numel())
    if cols is not None:
        _take(lin.weight, 1, cols, optimizers)
        lin.in_features = int(cols.numel())
    if layer is not None:
        for variant in layer.variants.values():
            a, b = variant.factors()
            if rows is not None:
                _take(b, 0, rows, optimizers)
            if cols is not None:
                _take(a, 1, cols, optimizers)
        layer.kind = type(layer.kind)(lin)
        layer._stack_cache = None


def _top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores, in ascending index order (ties: lower index wins)."""
    order = torch.argsort(scores.detach().float().cpu(), descending=True, stable=True)
    return sorted(order[:k].tolist())


def _allowed_heads(model: nn.Module, block: Block, heads: int) -> bool:
    """Whether transformers' config accepts `heads` query heads (Llama's config checks that
    hidden_size is a multiple of num_attention_heads)."""
    if block.family != "llama":
        return True
    return linear(model, block.q).in_features % heads == 0


def _scores_of(table: dict[int, torch.Tensor], block: Block, units: int, what: str,
               scores: UnitScores) -> torch.Tensor:
    if block.index not in table:
        raise LoraKitError(f"prune: the {scores.criterion!r} scores have no {what} scores for "
                           f"block {block.index} ({block.path!r}); score the model you prune")
    s = table[block.index]
    if s.numel() != units:
        raise LoraKitError(f"prune: block {block.index} has {units} {what} but the "
                           f"{scores.criterion!r} scores have {s.numel()}; scores go stale after "
                           "a prune: score the model again")
    return s


def plan_heads(model: nn.Module, block: Block, scores: UnitScores, keep_units: int,
               gqa: str) -> tuple[list[int], list[int]]:
    """(kept query heads, kept KV heads) of one block, keeping `keep_units` units: KV groups
    (gqa "groups", or a multi-head model), or query heads per group (gqa "queries")."""
    n_heads, n_kv, _ = head_counts(model, block)
    group = n_heads // n_kv
    q = _scores_of(scores.heads, block, n_heads, "query heads", scores).float().cpu()
    kv_table = scores.kv_heads
    kv = (_scores_of(kv_table, block, n_kv, "KV heads", scores).float().cpu()
          if block.index in kv_table else torch.zeros(n_kv))
    if gqa == "groups" or group == 1:
        unit = kv + q.reshape(n_kv, group).sum(1)
        kept_kv = _top(unit, keep_units)
        return [g * group + j for g in kept_kv for j in range(group)], kept_kv
    kept_q = [g * group + j for g in range(n_kv)
              for j in _top(q[g * group:(g + 1) * group], keep_units)]
    return kept_q, list(range(n_kv))


def _uniform(model: nn.Module, found: list[Block]):
    counts = {(head_counts(model, b), channel_count(model, b)) for b in found}
    if len(counts) != 1:
        raise LoraKitError(f"prune: the blocks of {type(model).__name__} differ in head or "
                           f"channel counts ({sorted(counts)}); pruning keeps them uniform and "
                           "starts from a uniform model")
    return next(iter(counts))


def head_units(model: nn.Module, gqa: str = "groups") -> int:
    """How many head units a block has: KV groups, or query heads per group (gqa "queries")."""
    (n_heads, n_kv, _), _ = _uniform(model, blocks(model))
    return n_kv if gqa == "groups" or n_heads == n_kv else n_heads // n_kv


def prune(model: nn.Module, scores: UnitScores, spec: PruneSpec | None = None,
          optimizers: Iterable[torch.optim.Optimizer] = ()) -> PruneReport:
    """Remove the lowest-scoring heads and channels of every block of `model`, in place.

    The fractions come from `spec` (default `PruneSpec()`, half of each); `scores` from
    `importance.unit_scores` on this same model. Returns the report with the kept-index map.
    """
    spec = spec or PruneSpec()
    found = blocks(model)
    units = head_units(model, spec.gqa)
    channels = channel_count(model, found[0])
    return prune_units(model, scores,
                       keep_head_units=keep_count(units, spec.heads_ratio) if spec.heads else None,
                       keep_channels=keep_count(channels, spec.channels_ratio)
                       if spec.channels else None,
                       gqa=spec.gqa, optimizers=optimizers)


@torch.no_grad()
def prune_units(model: nn.Module, scores: UnitScores, keep_head_units: int | None,
                keep_channels: int | None, gqa: str = "groups",
                optimizers: Iterable[torch.optim.Optimizer] = ()) -> PruneReport:
    """`prune` with absolute counts: keep `keep_head_units` head units (KV groups, or query
    heads per group with gqa "queries") and `keep_channels` channels in every block; None
    leaves that kind of unit alone. The iterative schedule (`prune_callback.py`) calls this."""
    optimizers = list(optimizers)
    found = blocks(model)
    (n_heads, n_kv, d), channels = _uniform(model, found)
    for block in found:     # refuse before anything changes
        paths = (*(block.head_modules if keep_head_units is not None else ()),
                 *((*block.mlp_in, block.mlp_out) if keep_channels is not None else ()))
        for path in paths:
            _check_adapters(model, path)
    params_before, bytes_before = size(model)
    if keep_head_units is not None:
        units = n_kv if gqa == "groups" or n_heads == n_kv else n_heads // n_kv
        per_unit = n_heads // units if gqa == "groups" or n_heads == n_kv else n_kv
        if not 1 <= keep_head_units <= units:
            raise LoraKitError(f"prune: keep_head_units must be in 1..{units}, got "
                               f"{keep_head_units}")
        while not _allowed_heads(model, found[0], keep_head_units * per_unit):
            keep_head_units += 1
    if keep_channels is not None and not 1 <= keep_channels <= channels:
        raise LoraKitError(f"prune: keep_channels must be in 1..{channels}, got {keep_channels}")
    report = PruneReport(found[0].family, len(found), n_heads, n_heads, n_kv, n_kv, channels,
                         channels, params_before, params_before, bytes_before, bytes_before)
    for block in found:
        if keep_head_units is not None:
            kept_q, kept_kv = plan_heads(model, block, scores, keep_head_units, gqa)
            _apply_heads(model, block, kept_q, kept_kv, d, report, optimizers)
        if keep_channels is not None:
            ch = _scores_of(scores.channels, block, channels, "MLP channels", scores)
            _apply_channels(model, block, _top(ch, keep_channels), report, optimizers)
    (report.heads_after, report.kv_heads_after, _), report.channels_after = _uniform(model, found)
    report.params_after, report.bytes_after = size(model)
    _update_config(model, found, report)
    return report


def _record(model: nn.Module, report: PruneReport, path: str, rows, cols) -> None:
    lin = linear(model, path)
    report.shapes[path] = [lin.out_features, lin.in_features]
    report.kept[path] = {"rows": rows.tolist() if rows is not None else list(range(lin.out_features)),
                         "cols": cols.tolist() if cols is not None else list(range(lin.in_features))}


def _apply_heads(model, block: Block, kept_q: list[int], kept_kv: list[int], d: int,
                 report: PruneReport, optimizers) -> None:
    q_rows, kv_rows = _head_rows(kept_q, d), _head_rows(kept_kv, d)
    for path, rows, cols in ((block.q, q_rows, None), (block.k, kv_rows, None),
                             (block.v, kv_rows, None), (block.o, None, q_rows)):
        _record(model, report, path, rows, cols)
        _slice_module(model, path, rows, cols, optimizers)
    attn = model.get_submodule(block.attention)
    if block.family == "llama":
        attn.num_key_value_groups = len(kept_q) // len(kept_kv)
    else:
        attn.num_attention_heads = len(kept_q)
        attn.all_head_size = len(kept_q) * d
    report.kept_heads[block.index] = kept_q
    report.kept_kv_heads[block.index] = kept_kv


def _apply_channels(model, block: Block, kept: list[int], report: PruneReport,
                    optimizers) -> None:
    idx = torch.tensor(kept, dtype=torch.long)
    for path in block.mlp_in:
        _record(model, report, path, idx, None)
        _slice_module(model, path, idx, None, optimizers)
    _record(model, report, block.mlp_out, None, idx)
    _slice_module(model, block.mlp_out, None, idx, optimizers)
    mlp = model.get_submodule(block.mlp)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(kept)
    report.kept_channels[block.index] = kept


def _update_config(model: nn.Module, found: list[Block], report: PruneReport) -> None:
    config = getattr(model, "config", None)
    if config is None:
        return
    config.intermediate_size = report.channels_after
    if report.family == "llama":
        config.head_dim = config.head_dim or config.hidden_size // config.num_attention_heads
        config.num_attention_heads = report.heads_after
        config.num_key_value_heads = report.kv_heads_after
        return
    if report.heads_after == report.heads_before:
        return
    # BERT: the head size is hidden / num_attention_heads, so the count stays and the removed
    # heads are recorded, in original numbering, as transformers 4's `pruned_heads` was
    pruned = {int(k): list(v) for k, v in (getattr(config, "pruned_heads", None) or {}).items()}
    for block in found:
        gone = set(pruned.get(block.index, []))
        alive = [h for h in range(config.num_attention_heads) if h not in gone]
        kept = {alive[i] for i in report.kept_heads[block.index]}
        pruned[block.index] = sorted(set(alive) - kept | gone)
    config.pruned_heads = {str(k): v for k, v in pruned.items()}


# --- loading a pruned BERT -----------------------------------------------------------
def load_pruned(model_class, folder, **kwargs) -> nn.Module:
    """A pruned model saved with `save_pretrained`, as `model_class` (e.g.
    `BertForSequenceClassification`). A model whose config describes its shapes (Llama, a
    channel-pruned BERT) is `model_class.from_pretrained(folder)`; a head-pruned BERT is
    built from its config, its recorded `pruned_heads` removed, and its weights loaded
    strictly (every tensor must fit)."""
    from safetensors.torch import load_file

    config = model_class.config_class.from_pretrained(folder)
    pruned = getattr(config, "pruned_heads", None) or {}
    if not pruned:
        return model_class.from_pretrained(folder, **kwargs)
    model = model_class._from_config(config, **{k: v for k, v in kwargs.items()
                                                if k in ("torch_dtype", "dtype")})
    found = blocks(model)
    n_heads, _, d = head_counts(model, found[0])
    for block in found:
        gone = set(pruned.get(str(block.index), pruned.get(block.index, [])))
        kept = [h for h in range(n_heads) if h not in gone]
        _apply_heads(model, block, kept, kept, d, PruneReport("bert", 0, *([0] * 10)), [])
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values()))
             if index.exists() else ["model.safetensors"])
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise LoraKitError(f"load_pruned: {folder} does not fit the pruned "
                           f"{model_class.__name__}: missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()
