"""Fold an adapter into a base model's weights stored as a safetensors state dict.

Works on any base saved as safetensors (a transformers `model.safetensors`, a
diffusers `diffusion_pytorch_model.safetensors`, a converted checkpoint) without
building the model: W ← W + ΔW for every adapted `<path>.weight`, ΔW computed from
the file's tensors by the adapter's own method and put in the weight's own layout.
"""
from __future__ import annotations

from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from ..atomic import atomic_write
from ..config import LoRAConfig
from ..errors import AdapterFileError, AdapterMismatchError
from ..io.adapter_file import layer_entries, read_adapter, saved_keys
from ..variants import variant_named


def merge_into_state_file(adapter, base, out, prefix: str = "") -> int:
    meta, tensors = read_adapter(adapter)
    config = LoRAConfig.from_dict(meta["config"])
    method = variant_named(config.method)
    try:
        with safe_open(str(base), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            base_meta = f.metadata()
    except Exception as err:
        raise AdapterFileError(f"base weights {base} are not a readable safetensors file "
                               f"({err})") from None
    for key in saved_keys(meta, tensors):   # a modules_to_save tensor: replaced, not added to
        name = prefix + key
        if name not in state:
            raise AdapterMismatchError(f"{base} has no tensor {name!r} for the adapter's "
                                       "saved module; check --prefix")
        state[name] = tensors[key].to(state[name].dtype)
    merged = 0
    for path, kind, shape in layer_entries(meta):
        name = f"{prefix}{path}.weight"
        if name not in state:
            raise AdapterMismatchError(
                f"{base} has no weight {name!r} that adapter {adapter} adapts; the file belongs "
                "to another base model, or its module paths need --prefix")
        if list(state[name].shape) != list(shape):
            raise AdapterMismatchError(f"{base}: {name!r} has shape {list(state[name].shape)}, "
                                       f"the adapter was made for {list(shape)}")
        w = state[name]
        delta = method.file_delta(tensors, path, kind, shape, method.scale_for(config),
                                  weight=w.float())
        state[name] = (w.float() + delta).to(w.dtype)
        merged += 1
    atomic_write(Path(out), lambda tmp: save_file(state, tmp, metadata=base_meta))
    return merged
