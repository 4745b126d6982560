"""The adapter file: one `.safetensors` file per adapter, its metadata in the header.

    header["lorakit"] = JSON {
        "format": 2, "version": <lorakit version>, "name": <adapter name>,
        "config": {method, rank, alpha, dropout, rslora, init, targets, modules_to_save},
        "fingerprint": {<module path>: [base weight shape], <module.param>: [shape...]},
        "fingerprint_sha256": <hash of the above>,
        "kinds": {<module path>: "linear" | "conv1d" | "conv2d" | "embedding"},
        "quantization": {<module path>: {"scheme": "nf4-g64", "library": "bitsandbytes",
                                         "version": "0.50.2"}},   # quantized bases only
        "extra": {...}            # whatever a plugin adds (base model name, steps, ...)
    }
    tensors:  the method's own keys (`Variant.file_keys`), e.g.
              <path>.lora_A (r × in), <path>.lora_B (out × r)      plain LoRA
              shared.<in>x<out>.lora_A / .lora_B, <path>.lora_lambda (r)   S2-LoRA
              <path>.lora_magnitude (out) with lora_A, lora_B           DoRA
              <path>.lora_R (r × r) with fixed lora_A, lora_B           LoRA-SB
              <path>.lora_A0, .lora_B0 (the init) with lora_A, lora_B   LoRA-GA
              <path>.<name>                                          modules_to_save

A's `in` and B's `out` are those of ΔW as a matrix (`lorakit.layers.kinds`): a Linear's
in/out features, a Conv2d's in·k·k and out channels, an Embedding's table size and
width. Format 1 (lorakit 0.1) had no `kinds` and no `name`: every module was a Linear.
A file of a newer format than this lorakit reads is refused, naming both.

`quantization` lists the adapted modules whose base was quantized when the adapter was
saved (`QuantSpec.record()`); every other adapted module's base was full precision. An
adapter on a quantized Linear is a Linear's (its kind is "linear"), so every reader
treats it as one; `load_adapter` refuses a base of another precision, by name
(`allow_other_precision` overrides). A file without the entry (written before lorakit
kept it) is loaded onto any precision, as before.

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

from ..atomic import atomic_write
from ..config import LoRAConfig
from ..errors import AdapterFileError, LoraKitError
from ..layers.kinds import kind_named
from ..variants import variant_named
from ..version import __version__

FORMAT = 2


def fingerprint_hash(fingerprint: dict[str, list[int]]) -> str:
    text = json.dumps(sorted(fingerprint.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def payload(adapters, name: str | None = None,
            extra: dict | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of adapter `name` on a handle, exactly as its file holds them."""
    name = adapters._one(name)
    fp = adapters.fingerprint(name)
    meta = {"format": FORMAT, "version": __version__, "name": name,
            "config": adapters.configs[name].to_dict(), "fingerprint": fp,
            "fingerprint_sha256": fingerprint_hash(fp), "kinds": adapters.kinds(name),
            "quantization": adapters.quantization(name), "extra": extra or {}}
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapters.state_dict(name).items()}
    return meta, tensors


def save_adapter(adapters, path, extra: dict | None = None, name: str | None = None) -> Path:
    meta, tensors = payload(adapters, name, extra)
    return atomic_write(Path(path), lambda tmp: save_file(
        tensors, tmp, metadata={"lorakit": json.dumps(meta)}))


def read_adapter(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of an adapter file, or an `AdapterFileError` that says why not.

    The metadata always has `kinds` and `name` (filled in for a format-1 file).
    """
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
        fmt = int(meta["format"])
        config = meta["config"]
        fp = meta["fingerprint"]
    except (ValueError, KeyError, TypeError) as err:
        raise AdapterFileError(f"{path} has damaged lorakit metadata ({err})") from None
    if fmt > FORMAT:
        raise AdapterFileError(
            f"{path} is adapter format {fmt}, written by lorakit {meta.get('version', '?')}; "
            f"this lorakit {__version__} reads formats up to {FORMAT}. Upgrade lorakit to "
            "load it.")
    if meta.get("fingerprint_sha256") != fingerprint_hash(fp):
        raise AdapterFileError(f"{path}: the base-model fingerprint in its metadata does not "
                               "match its checksum; the file was edited or damaged")
    try:
        parsed = LoRAConfig.from_dict(config)
        cls = variant_named(parsed.method, source=str(path))
        if fmt == 1:   # every adapted module was a Linear; its keys tell them from saved ones
            meta["kinds"] = {p: "linear" for p in fp if f"{p}.lora_A" in tensors
                             or f"{p}.lora_lambda" in tensors}
            meta["name"] = "default"
        for p, kind in meta["kinds"].items():
            missing = [k for k in cls.keys_for(parsed, p, kind_named(kind, str(path)), fp[p])
                       if k not in tensors]
            if missing:
                raise AdapterFileError(f"{path} lacks tensor {missing[0]!r} of module {p!r}; "
                                       "the file is damaged")
    except AdapterFileError:
        raise
    except LoraKitError as err:
        raise AdapterFileError(f"{path}: {err}") from None
    except (KeyError, TypeError) as err:
        raise AdapterFileError(f"{path} has damaged lorakit metadata ({err})") from None
    return meta, tensors


def layer_entries(meta: dict):
    """(path, kind class, weight shape) of every adapted module a file describes."""
    for path, kind in meta["kinds"].items():
        yield path, kind_named(kind), meta["fingerprint"][path]


def saved_keys(meta: dict, tensors: dict) -> list[str]:
    """Keys of the modules_to_save tensors: every key no adapted module claims."""
    config = LoRAConfig.from_dict(meta["config"])
    cls = variant_named(config.method)
    claimed = {k for p, kind, shape in layer_entries(meta)
               for k in cls.keys_for(config, p, kind, shape)}
    return [k for k in tensors if k not in claimed]
