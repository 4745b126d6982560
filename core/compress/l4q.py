r"""L4Q's product: the quantized model an `l4q` adapter trained (Jeon et al. 2024).

    training (lorakit.variants.l4q)         export (this file)              deployment
    W, A, B, Δ, b  ──► Ŵ = Q(W + s·B A)  ──► codes q, Δ, b per group  ──► W = q·Δ + b
                                                (l4q_model.safetensors)    torch + safetensors

The method (`LoRAConfig(method="l4q", l4q=L4QOptions(bits=4, group_size=64))`) trains
LoRA inside the quantizer; `export_l4q` writes what it converged to as integer codes
and the learned step sizes and offsets, and every other tensor of the model (embeddings,
norms, the head: not quantized) as it is. `l4q_format.load_l4q_state` reads the file
back with torch and safetensors only, no lorakit adapter code, and the model built from
it gives the training forward's logits.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..adapters import Adapters
from ..errors import LoraKitError
from ..variants.l4q import L4Q
from .l4q_format import FORMAT, pack_codes

FILE = "l4q_model.safetensors"


def _plain_state(model: nn.Module, adapters: Adapters) -> dict[str, torch.Tensor]:
    """The model's state dict under the names it had before lorakit wrapped its layers."""
    state = {}
    for key, tensor in model.state_dict().items():
        for path in adapters.layers:
            if key.startswith(f"{path}.variants."):
                key = None
                break
            if key.startswith(f"{path}.base."):
                key = f"{path}.{key[len(path) + 6:]}"
                break
        if key is not None:
            state[key] = tensor.detach().clone().contiguous()
    return state


@torch.no_grad()
def export_l4q(model: nn.Module, adapters: Adapters, out_dir, name: str | None = None) -> Path:
    """Write the model with adapter `name` (default: the only one) quantized as it trained:
    `<out_dir>/l4q_model.safetensors` (format in `l4q_format`) and, for a transformers
    model, its `config.json`. Returns the file's path."""
    from safetensors.torch import save_file

    name = adapters._one(name)
    variants = adapters.variants(name)
    if not variants or not all(isinstance(v, L4Q) for v in variants.values()):
        raise LoraKitError(f"export_l4q: adapter {name!r} is method "
                           f"{adapters.configs[name].method!r}; it exports an 'l4q' adapter")
    others = [n for n in adapters.active if n != name]
    if others:
        raise LoraKitError(f"export_l4q: adapters {others} are active besides {name!r}; the "
                           "export holds the L4Q model alone: set_active(name) first")
    if any(name in layer.merged for layer in adapters.layers.values()):
        raise LoraKitError(f"export_l4q: adapter {name!r} is merged; unmerge() it first (the "
                           "export quantizes W + B·A from the full-precision W)")
    state = _plain_state(model, adapters)
    modules = {}
    for path, variant in variants.items():
        weight = adapters.layers[path].kind.to_matrix(adapters.layers[path].base.weight)
        codes = variant.codes(weight)
        key = f"{path}.weight"
        del state[key]
        state[f"{key}.codes"] = pack_codes(codes, variant.bits)
        state[f"{key}.step"] = variant.l4q_step.detach().float().clone()
        state[f"{key}.offset"] = variant.l4q_offset.detach().float().clone()
        modules[path] = {"bits": variant.bits, "group_size": int(codes.shape[-1]),
                         "shape": list(weight.shape)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / FILE), metadata={"format": FORMAT, "modules": json.dumps(modules)})
    config = getattr(model, "config", None)
    if hasattr(config, "to_json_file"):
        config.to_json_file(str(out / "config.json"))
    return out / FILE
