r"""LoRAM: train LoRA on a pruned base, use it on the full one (Zhang et al. 2025).

"Train Small, Infer Large: Memory-Efficient LoRA Training for Large Language Models"
(ICLR 2025, sec. 3): the memory of LoRA training is mostly the frozen base, and many of
its units matter for inference more than for learning the update, so

    full W₀ ──prune──► W_P ──(align)──► W_P' ──LoRA──► B_P A_P ──recover──► B_R A_R on W₀
             (heads,     (a few steps of   (plain lorakit  (zeros where units
              channels)   continual        attach/train)    were pruned)
                          pretraining)

Recovery puts each pruned module's factors back into the full module's shape with the
kept-index map recorded at pruning time (`PruneReport.kept`): for a module that kept
rows R and columns C,

    A_R = 0 (r × in_full),  A_R[:, C] = A_P        B_R = 0 (out_full × r),  B_R[R] = B_P
    so  ΔW_R = B_R A_R  has ΔW_R[R][:, C] = B_P A_P = ΔW_P  and zeros elsewhere,

the paper's zero-filling recovery. The recovered file is an ordinary lorakit adapter
file for the full base: `lorakit.load_adapter(full_model, path)` checks it against the
full model's shapes and attaches it. The paper's structured variant (LoRAM-Stru) prunes
with LLM-Pruner, so `criterion="taylor"` is the default here; alignment is the paper's
continual pretraining of the pruned model on general text, a few steps of its own
language-model loss over all its weights (`align`), or whatever `align_fn` does.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..adapters import Adapters
from ..atomic import atomic_write
from ..errors import LoraKitError
from ..io.adapter_file import fingerprint_hash, payload
from .importance import Criterion, default_loss, unit_scores
from .prune import PruneReport, PruneSpec, prune


def prune_base(model: nn.Module, spec: PruneSpec, criterion: Criterion = "taylor",
               batches: Iterable | None = None, loss_fn=None,
               copy_model: bool = True) -> tuple[nn.Module, PruneReport]:
    """The pruned base and its report; `copy_model=False` prunes `model` itself (the memory
    LoRAM saves is then really saved)."""
    small = copy.deepcopy(model) if copy_model else model
    scores = unit_scores(small, criterion, batches=batches, loss_fn=loss_fn)
    return small, prune(small, scores, spec)


def align(model: nn.Module, batches: Iterable, steps: int, lr: float = 1e-4,
          loss_fn: Callable[[nn.Module, object], torch.Tensor] | None = None) -> list[float]:
    """Continual pretraining of the pruned base: `steps` AdamW steps on all its weights over
    `batches` (cycled), `loss_fn(model, batch)` (default `model(**batch).loss`). Returns the
    losses; the weights' `requires_grad` is restored after."""
    batches = list(batches)
    if steps < 1 or not batches:
        raise LoraKitError("align: give steps >= 1 and at least one batch of held-out text")
    loss_fn = loss_fn or default_loss
    before = {id(p): p.requires_grad for p in model.parameters()}
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    was_training = model.training
    model.train()
    try:
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, batches[step % len(batches)])
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        for p in params:
            p.requires_grad_(before[id(p)])
            p.grad = None
        model.train(was_training)
    return losses


def recovered_tensors(adapters: Adapters, report: PruneReport,
                      name: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of adapter `name` put back into the full base's shapes."""
    meta, tensors = payload(adapters, name, None)
    method = meta["config"]["method"]
    if method != "lora":
        raise LoraKitError(f"LoRAM recovery: adapter {meta['name']!r} is method {method!r}; "
                           "recovery zero-fills plain LoRA factors (method 'lora') only")
    out = dict(tensors)
    for path, kind in meta["kinds"].items():
        if path not in report.kept:
            continue
        if kind != "linear":
            raise LoraKitError(f"LoRAM recovery: module {path!r} is a {kind}; pruned modules "
                               "are nn.Linear")
        full_out, full_in = report.shapes[path]
        rows = torch.tensor(report.kept[path]["rows"], dtype=torch.long)
        cols = torch.tensor(report.kept[path]["cols"], dtype=torch.long)
        a, b = tensors[f"{path}.lora_A"], tensors[f"{path}.lora_B"]
        if a.shape[1] != cols.numel() or b.shape[0] != rows.numel():
            raise LoraKitError(f"LoRAM recovery: module {path!r} has A {list(a.shape)}, B "
                               f"{list(b.shape)} but the report kept {rows.numel()} rows and "
                               f"{cols.numel()} columns; pass the report of this model's pruning")
        a_full = a.new_zeros(a.shape[0], full_in)
        a_full[:, cols] = a
        b_full = b.new_zeros(full_out, b.shape[1])
        b_full[rows] = b
        out[f"{path}.lora_A"], out[f"{path}.lora_B"] = a_full, b_full
        meta["fingerprint"][path] = [full_out, full_in]
    for key in meta["fingerprint"]:
        owner = key.rsplit(".", 1)[0]
        if key not in meta["kinds"] and any(owner == p or owner.startswith(p + ".")
                                            for p in report.kept):
            raise LoraKitError(f"LoRAM recovery: {key!r} is trained in full (modules_to_save) "
                               "inside a pruned module; it has no full-size counterpart")
    meta["fingerprint_sha256"] = fingerprint_hash(meta["fingerprint"])
    meta["extra"] = {"loram": report.summary()}
    return meta, out


def recover(adapters: Adapters, report: PruneReport, path, name: str | None = None) -> Path:
    """Write adapter `name` of the pruned model as an adapter file for the full model."""
    meta, tensors = recovered_tensors(adapters, report, name)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    return atomic_write(Path(path), lambda tmp: save_file(
        tensors, tmp, metadata={"lorakit": json.dumps(meta)}))


@dataclass
class LoRAMResult:
    pruned: nn.Module           # the small model, with its trained adapter attached
    report: PruneReport
    adapter_file: Path          # the recovered adapter, for the full model
    align_losses: list[float]


def loram(model: nn.Module, lora, train: Callable[[nn.Module, Adapters], None],
          out, spec: PruneSpec | None = None, criterion: Criterion = "taylor",
          score_batches: Iterable | None = None, align_batches: Iterable | None = None,
          align_steps: int = 0, align_fn: Callable[[nn.Module], object] | None = None,
          loss_fn=None, copy_model: bool = True) -> LoRAMResult:
    """The whole of LoRAM: prune `model` → align → attach `lora` (a `LoRAConfig`) and
    `train(pruned, adapters)` → recover to `out`, an adapter file for `model`.

    `align_fn(pruned)` replaces the built-in alignment (`align_steps` steps over
    `align_batches`); with neither, the pruned model is trained as it is (the paper's
    LoRAM without alignment).
    """
    from ..adapters import attach

    small, report = prune_base(model, spec or PruneSpec(), criterion, score_batches, loss_fn,
                               copy_model)
    losses: list[float] = []
    if align_fn is not None:
        align_fn(small)
    elif align_steps:
        losses = align(small, align_batches or [], align_steps, loss_fn=loss_fn)
    adapters = attach(small, lora)
    train(small, adapters)
    return LoRAMResult(small, report, recover(adapters, report, out), losses)
