"""The adapter file: one `.safetensors` file, its metadata in the header.

    header["lorakit"] = JSON {
        "format": 1, "version": <lorakit version>,
        "config": {method, rank, alpha, dropout, rslora, init, targets, modules_to_save},
        "fingerprint": {<module path>: [out, in], <module.param>: [shape...]},
        "fingerprint_sha256": <hash of the above>,
        "extra": {...}            # whatever a plugin adds (base model name, steps, ...)
    }
    tensors:  <path>.lora_A (r × in), <path>.lora_B (out × r)      plain LoRA
              shared.<in>x<out>.lora_A / .lora_B, <path>.lora_lambda (r)   S2-LoRA
              <path>.<name>                                          modules_to_save

safetensors stores raw tensors and a JSON header, so nothing is ever unpickled.
Writes go to a temporary file in the same folder and are renamed into place, so a
crash never leaves a half-written adapter behind.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import atomic_write
from .config import LoRAConfig
from .errors import AdapterFileError, AdapterMismatchError
from .inject import Adapters, attach, check_fingerprint
from .version import __version__

FORMAT = 1


def fingerprint_hash(fingerprint: dict[str, list[int]]) -> str:
    text = json.dumps(sorted(fingerprint.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_adapter(adapters: Adapters, path, extra: dict | None = None) -> Path:
    path = Path(path)
    fp = adapters.fingerprint()
    meta = {"format": FORMAT, "version": __version__, "config": adapters.config.to_dict(),
            "fingerprint": fp, "fingerprint_sha256": fingerprint_hash(fp), "extra": extra or {}}
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapters.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"lorakit": json.dumps(meta)}))
    return path


def read_adapter(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of an adapter file, or an `AdapterFileError` that says why not."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"adapter file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types and OSError
        size = path.stat().st_size
        raise AdapterFileError(
            f"{path} is not a readable safetensors adapter ({size} bytes; {err}). The file "
            "is truncated or corrupt: save or download it again.") from None
    if "lorakit" not in header:
        raise AdapterFileError(
            f"{path} is a safetensors file without lorakit metadata. If it is a PEFT "
            "adapter, use lorakit.import_peft on its folder (adapter_config.json beside it).")
    try:
        meta = json.loads(header["lorakit"])
        LoRAConfig.from_dict(meta["config"])
        fp = meta["fingerprint"]
    except (ValueError, KeyError, TypeError) as err:
        raise AdapterFileError(f"{path} has damaged lorakit metadata ({err})") from None
    if meta.get("fingerprint_sha256") != fingerprint_hash(fp):
        raise AdapterFileError(f"{path}: the base-model fingerprint in its metadata does not "
                               "match its checksum; the file was edited or damaged")
    return meta, tensors


def load_adapter(model: torch.nn.Module, path) -> Adapters:
    """Attach the adapters a file describes to `model` and load their weights.

    Refuses (AdapterMismatchError) a file made for another base, naming the first
    module that differs.
    """
    meta, tensors = read_adapter(path)
    check_fingerprint(model, meta["fingerprint"], source=f"adapter {path}")
    config = LoRAConfig.from_dict(meta["config"])
    adapters = attach(model, config)
    if set(adapters.fingerprint()) != set(meta["fingerprint"]):
        extra = sorted(set(adapters.fingerprint()) - set(meta["fingerprint"]))
        adapters.detach()
        raise AdapterMismatchError(
            f"adapter {path}: its target patterns match more modules in this model than in "
            f"the base it was made for (e.g. {extra[:3]}); load it onto the model it was "
            "trained on")
    try:
        adapters.load_state_dict(tensors, source=f"adapter {path}")
    except Exception:
        adapters.detach()
        raise
    return adapters
