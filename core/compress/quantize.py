r"""`quantize`: a model's Linear layers held quantized, and what that saved.

    model ── each nn.Linear whose path matches `targets` (default: every one) ──┐
             except `keep` (default: the output heads)                         │
          ◄── QuantizedLinear.from_linear(linear, spec), in the Linear's place ─┘
              (bitsandbytes nf4 / fp4, HQQ int2 / int3 / int4 / int8: layers/quantized.py)

    report = lorakit.quantize(model, "nf4")
    report.bytes_before, report.bytes_after     # weight bytes, biases left out
    report.kept                                 # {path: why it stayed in full precision}

QLoRA (Dettmers et al., 2023, sec. 3) quantizes every Linear of the base and leaves the
output layer in 16-bit: transformers' bitsandbytes integration skips `lm_head` (and any
module tied to the input embeddings) by default. `keep` does the same here: by default
the module the model names as its output embeddings (`get_output_embeddings()`) and any
module whose last name is one of `HEADS`, with every Linear inside it (a classifier
that is a small MLP), stay in full precision; `keep=[]` quantizes them too. A matched Linear whose `in_features` is not a multiple of the group size is
left in full precision with that reason, never an error, as are matched modules that are
not Linear layers (an Embedding, GPT-2's Conv1D) and Linears already held quantized.

The swap is from the outside (the parent's attribute is replaced, as `wrap` does); the
original weights are released as each module is replaced, so peak memory is the model
plus one layer. `attach` calls this on its targets when `LoRAConfig.base_quantization`
is set, and `quantize_like(model, adapter_file)` quantizes a fresh base as an adapter file
records its base was. Quantizing is lossy and is not undone by `detach`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..adapters.targets import _set_child, matches
from ..errors import TargetNotFoundError
from ..layers import LoRALayer
from ..layers.kinds import kind_of
from ..layers.quantized import QuantizedLinear, QuantSpec, _require

#: last path names of output layers kept in full precision by default (a causal LM's
#: `lm_head`, a sequence classifier's `classifier` / `score`, a QA head's `qa_outputs`)
HEADS = ("lm_head", "classifier", "score", "qa_outputs")


@dataclass(frozen=True)
class QuantizedModule:
    """One replaced Linear: its (out, in) shape and its weight's bytes before and after."""

    shape: tuple[int, int]
    bytes_before: int
    bytes_after: int


@dataclass
class QuantizeReport:
    """What `quantize` did: the replaced modules with their bytes, and the modules it was
    asked for but left in full precision, each with why."""

    spec: QuantSpec
    quantized: dict[str, QuantizedModule] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)

    @property
    def bytes_before(self) -> int:
        return sum(m.bytes_before for m in self.quantized.values())

    @property
    def bytes_after(self) -> int:
        return sum(m.bytes_after for m in self.quantized.values())

    @property
    def ratio(self) -> float:
        """bytes_after / bytes_before of the replaced weights (0.0 when none was)."""
        return self.bytes_after / self.bytes_before if self.bytes_before else 0.0

    def table(self) -> str:
        """A markdown table, one row per module, the total last, the kept ones after."""
        rows = ["| module | shape (out × in) | bytes before | bytes after |",
                "|---|---|---:|---:|"]
        rows += [f"| {p} | {m.shape[0]} × {m.shape[1]} | {m.bytes_before:,} | "
                 f"{m.bytes_after:,} |" for p, m in self.quantized.items()]
        rows.append(f"| **total** ({len(self.quantized)} modules, {self.spec}) | | "
                    f"{self.bytes_before:,} | {self.bytes_after:,} |")
        kept = [f"- `{p}`: {why}" for p, why in self.kept.items()]
        return "\n".join(rows + ([""] + ["Kept in full precision:"] + kept if kept else []))

    def __str__(self) -> str:
        return (f"quantized {len(self.quantized)} Linear layers to {self.spec} "
                f"({self.spec.library}): {self.bytes_before / 2**20:.2f} MiB -> "
                f"{self.bytes_after / 2**20:.2f} MiB of weights ({self.ratio:.1%}); "
                f"{len(self.kept)} kept in full precision")


def default_keep(model: nn.Module) -> list[str]:
    """The output heads `quantize` leaves alone unless told otherwise: `HEADS` by name, and
    the module the model names as its output embeddings (transformers' models do)."""
    keep = list(HEADS)
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if isinstance(head, nn.Module):
        keep += [p for p, m in model.named_modules() if m is head and p]
    return keep


def _kept(path: str, keep: list[str]) -> bool:
    """Whether `path` or a module above it (a head's own Linear layers) matches `keep`."""
    parts = path.split(".")
    return any(matches(".".join(parts[:i]), k) for i in range(1, len(parts) + 1) for k in keep)


def _why_not(module: nn.Module, spec: QuantSpec) -> str | None:
    """Why a matched module stays in full precision, or None when it can be quantized."""
    if isinstance(module, QuantizedLinear):
        return f"already quantized ({module.spec})"
    if isinstance(module, LoRALayer):
        return ("carries lorakit adapters: quantize the model before attaching adapters "
                "(or set LoRAConfig.base_quantization)")
    if not isinstance(module, nn.Linear):
        return f"a {kind_of(module).label}, not an nn.Linear"
    library = type(module).__module__.split(".")[0]
    if library in ("bitsandbytes", "hqq", "torchao"):
        return f"already quantized by {library} ({type(module).__name__})"
    if module.in_features % spec.group_size:
        return (f"in_features={module.in_features} is not a multiple of the group size "
                f"{spec.group_size} (a smaller group, e.g. {spec.scheme}-g32, may divide it)")
    return None


def quantize(model: nn.Module, spec: QuantSpec | str = "nf4", targets: list[str] | None = None,
             keep: list[str] | None = None) -> QuantizeReport:
    """Replace the model's Linear layers matching `targets` by `QuantizedLinear`s in `spec`.

    Args:
        model: any nn.Module; changed in place.
        spec: 'nf4', 'fp4' (bitsandbytes), 'int2', 'int3', 'int4', 'int8' (HQQ), each with
            an optional group size ('int4-g128'; default 64), or a `QuantSpec`.
        targets: glob patterns on module paths, as `LoRAConfig.targets` ('*.query',
            'encoder.*'; a pattern without a dot also matches the last path name); None:
            every nn.Linear. A pattern that matches no module at all is an error.
        keep: patterns of modules left in full precision; None: the output heads
            (`default_keep`), [] quantizes those too.

    Returns a `QuantizeReport`: bytes before and after per replaced module and in total,
    and every matched module left in full precision with why.
    """
    spec = QuantSpec.parse(spec)
    _require(spec.library)        # a missing library is refused before anything changes
    heads = keep is None
    keep = default_keep(model) if heads else list(keep)
    named = [(p, m) for p, m in model.named_modules() if p]
    for pattern in targets or []:
        if not any(matches(p, pattern) for p, _ in named):
            examples = ", ".join(p for p, m in named if isinstance(m, nn.Linear))
            raise TargetNotFoundError(
                f"quantize: pattern {pattern!r} matched no module of {type(model).__name__}; "
                f"its Linear layers: {examples[:400] or '(none)'}")
    report = QuantizeReport(spec)
    inside: list[str] = []        # the children of a quantized or wrapped module
    for path, module in named:
        if any(path.startswith(q) for q in inside):
            continue
        if isinstance(module, (nn.Linear, QuantizedLinear, LoRALayer)):
            inside.append(path + ".")
        elif targets is None or kind_of(module) is None:
            continue              # a container, or a non-Linear nobody asked for
        if targets is not None and not any(matches(path, t) for t in targets):
            continue
        if _kept(path, keep):
            report.kept[path] = ("an output head, kept in full precision as QLoRA does "
                                 "(keep=[] quantizes it)" if heads else "matched by keep")
            continue
        _quantize_one(model, path, module, report)
    return report


def quantize_modules(model: nn.Module, spec: QuantSpec | str, paths: list[str]) -> QuantizeReport:
    """`quantize` on exactly the modules at `paths` (no patterns, no heads kept): what
    `attach` does with `LoRAConfig.base_quantization` on the modules it targets."""
    spec = QuantSpec.parse(spec)
    _require(spec.library)
    report = QuantizeReport(spec)
    for path in paths:
        _quantize_one(model, path, model.get_submodule(path), report)
    return report


def quantize_like(model: nn.Module, adapter) -> list[QuantizeReport]:
    """Quantize the modules an adapter's base held quantized, each in its recorded spec
    (the file's `quantization` entry), so that `load_adapter` takes it: how a plugin
    loads its own QLoRA adapter for `predict`. `adapter`: an adapter file, or its
    metadata. A file of a full-precision base, or one without the record, changes
    nothing (returns [])."""
    from ..io.adapter_file import read_adapter

    meta = adapter if isinstance(adapter, dict) else read_adapter(adapter)[0]
    by_spec: dict[str, list[str]] = {}
    for path, record in (meta.get("quantization") or {}).items():
        by_spec.setdefault(record["scheme"], []).append(path)
    return [quantize_modules(model, spec, paths) for spec, paths in by_spec.items()]


def _quantize_one(model: nn.Module, path: str, module: nn.Module, report: QuantizeReport) -> None:
    why = _why_not(module, report.spec)
    if why is not None:
        report.kept[path] = why
        return
    bytes_before = module.weight.numel() * module.weight.element_size()
    quantized = QuantizedLinear.from_linear(module, report.spec).train(module.training)
    _set_child(model, path, quantized)
    report.quantized[path] = QuantizedModule(quantized.weight_shape, bytes_before,
                                             quantized.nbytes())


__all__ = ["HEADS", "QuantizeReport", "QuantizedModule", "default_keep", "quantize",
           "quantize_like", "quantize_modules"]
