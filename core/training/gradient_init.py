"""`init_from_gradients`: set an adapter from the gradient full fine-tuning would take.

LoRA-GA and LoRA-SB start from the first step of full fine-tuning. For every module
adapter `name` adapts, the gradient of the loss with respect to its base weight is
averaged over a few batches and handed, with the weight, to the variant's
`init_from_gradient(grad, weight)` (both (out × in) matrices in float32, whatever the
layer kind), which sets its tensors.

    adapters = lorakit.attach(model, lorakit.LoRAConfig(method="lora_ga", rank=8))
    lorakit.init_from_gradients(model, adapters, batches[:8],
                                lambda m, b: m(**b).loss)

The gradients are the bare base model's (every adapter off, merged ones taken out),
as the papers take them at W₀, in the mode the model is in (call `model.train()` first
for training-time dropout). The base weights require grad only while this runs, and
`torch.autograd.grad` hands the gradients back without writing any `.grad`, so nothing
of the model changes but the adapter's tensors. A quantized base (`QuantizedLinear`)
has no weight autograd can differentiate, so while this runs it is swapped for a plain
Linear holding its dequantized weight (the same forward, `dense_linear`): the gradient
is the one at the weights the adapter trains on, at the memory of that full-precision
layer for the duration.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..adapters import Adapters
from ..errors import LoraKitError
from ..layers.quantized import QuantizedLinear, dense_linear
from ..variants import Variant


def init_from_gradients(model: nn.Module, adapters: Adapters, batches: Iterable[Any],
                        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                        name: str | None = None) -> int:
    """Initialise adapter `name` from the base weights' gradients averaged over `batches`
    (`loss_fn(model, batch)` → scalar loss); returns the number of batches used."""
    sums, count = base_gradients(model, adapters, batches, loss_fn, name)
    if count == 0:
        raise LoraKitError("init_from_gradients: `batches` gave no batch")
    apply_gradient_init(adapters, {path: total / count for path, total in sums.items()}, name)
    return count


def gradient_variants(adapters: Adapters, name: str | None = None) -> dict:
    """{module path: variant} of adapter `name`, refused unless every variant has a
    gradient-driven init."""
    name = adapters._one(name)
    variants = adapters.variants(name)
    cannot = sorted({v.method for v in variants.values()
                     if type(v).init_from_gradient is Variant.init_from_gradient})
    if cannot:
        raise LoraKitError(f"adapter {name!r} is {cannot[0]!r}, which has no gradient-driven "
                           "init; use method 'lora_ga' or 'lora_sb'")
    return variants


def base_gradients(model: nn.Module, adapters: Adapters, batches: Iterable[Any],
                   loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                   name: str | None = None, clip: float | None = None
                   ) -> tuple[dict[str, torch.Tensor], int]:
    """({module path: Σ gradient of its base weight, (out × in) float32}, batches used)
    over `batches`, with every adapter off. With `clip`, each batch's gradient is scaled
    to an L2 norm ≤ clip (one norm over all modules together) before it is summed: with
    one-sample batches, DP-SGD's per-sample clipping. Several parties' sums add up to the
    sum over all their batches (a federated init)."""
    variants = gradient_variants(adapters, name)
    layers = [adapters.layers[p] for p in variants]
    quantized = {i: layer.base for i, layer in enumerate(layers)
                 if isinstance(layer.base, QuantizedLinear)}
    for i, base in quantized.items():     # differentiable stand-ins, put back below
        layers[i].base = dense_linear(base)
    weights = [layer.base.weight for layer in layers]
    sums = [torch.zeros(w.shape, dtype=torch.float32, device=w.device) for w in weights]
    flags = [w.requires_grad for w in weights]
    count = 0
    try:
        for w in weights:
            w.requires_grad_(True)
        with adapters.disabled(), torch.enable_grad():
            for batch in batches:
                grads = [torch.zeros_like(total) if g is None else g.float() for total, g in
                         zip(sums, torch.autograd.grad(loss_fn(model, batch), weights,
                                                       allow_unused=True))]
                factor = 1.0
                if clip is not None:
                    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
                    factor = float((clip / (norm + 1e-6)).clamp(max=1.0))
                for total, g in zip(sums, grads):
                    total.add_(g, alpha=factor)
                count += 1
    finally:
        for w, flag in zip(weights, flags):
            w.requires_grad_(flag)
        for i, base in quantized.items():
            layers[i].base = base
    return {path: layer.kind.to_matrix(total)
            for path, layer, total in zip(variants, layers, sums)}, count


@torch.no_grad()
def apply_gradient_init(adapters: Adapters, grads: dict[str, torch.Tensor],
                        name: str | None = None) -> None:
    """Set adapter `name` from `{module path: mean gradient (out × in)}` (`base_gradients`'
    sums over their count, or an average of several parties' sums)."""
    variants = gradient_variants(adapters, name)
    missing = sorted(set(variants) - set(grads))
    if missing:
        raise LoraKitError(f"gradient init: no gradient for module {missing[0]!r}")
    for path, variant in variants.items():
        layer = adapters.layers[path]
        variant.init_from_gradient(grads[path].float(),
                                   layer.kind.to_matrix(layer.base.weight.detach().float()))
