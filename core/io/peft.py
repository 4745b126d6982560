"""lorakit adapters to and from PEFT's on-disk layout.

    out_dir/adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha", ...}
    out_dir/adapter_model.safetensors  base_model.model.<path>.lora_A.weight (r × in)
                                       base_model.model.<path>.lora_B.weight (out × r)
                                       base_model.model.<path>.lora_embedding_A / _B (Embedding)
                                       base_model.model.<path>.<suffix>  (`Variant.peft_extra`:
                                       DoRA's lora_magnitude_vector)
                                       base_model.model.<module>.<param>   (modules_to_save)
    out_dir/<name>/...                 every other named adapter (PEFT's save_pretrained rule:
                                       "default" at the top, the others in sub-folders)

so `peft.PeftModel.from_pretrained(model, out_dir)` (and transformers/diffusers,
which read the same files) load what lorakit trained. Any method whose update is a
product B A per module (`Variant.peft`) exports: S2-LoRA as A and B·diag(λᵢ), which
is exactly its update; FFA-LoRA, LoRA-SB (B·R and A) and LoRA-GA (rank 2r, its
offset included) as plain LoRA; DoRA as A, B plus its magnitude and `use_dora`
(`Variant.peft_config`), which is also how an imported folder is recognised as DoRA.
The layer kind gives the layout (a Conv2d's factors as 4-d
convolutions, GPT-2's Conv1D with `fan_in_fan_out`); an adapter on a quantized Linear
(`QuantizedLinear`) exports as a Linear's, and a PEFT folder imports onto a quantized
base as onto a Linear (PEFT records no base precision, so none is checked). PEFT scales by lora_alpha / r;
a module whose rank differs from the common one (a pruned S2-LoRA basis) gets its own
entry in `rank_pattern` and `alpha_pattern`, so every module keeps lorakit's scale.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..adapters import DEFAULT, Adapters, attach, describe
from ..atomic import atomic_write
from ..config import LoRAConfig
from ..errors import AdapterFileError, AdapterMismatchError
from ..layers import LoRALayer
from ..layers.kinds import kind_of, weight_shape
from ..variants import VARIANTS, LoRA, Variant, variant_named
from .adapter_file import layer_entries, payload, read_adapter, saved_keys

PREFIX = "base_model.model."
# PEFT inits that subtract the initial B A from the base weight (PiSSA, OLoRA, CorDA, LoRA-GA)
MUTATED_INITS = ("pissa", "olora", "corda", "lora_ga")
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def write_peft(meta: dict, tensors: dict[str, torch.Tensor], out_dir: Path,
                source: str) -> Path:
    """Write an adapter file's metadata and tensors as a PEFT folder (`adapter_config.json`
    + `adapter_model.safetensors`); refuses a method PEFT has no layout for."""
    config = LoRAConfig.from_dict(meta["config"])
    method = variant_named(config.method)
    if not method.peft:
        raise AdapterFileError(f"{source}: method {config.method!r} has no PEFT LoRA layout"
                               + (f": {method.peft_refusal}" if method.peft_refusal else ""))
    peft_tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    kinds = set()
    for path, kind, shape in layer_entries(meta):
        a, b = method.file_factors(tensors, path, kind, shape)
        if a.shape[0] == 0:      # every rank pruned: ΔW = 0, nothing for PEFT to hold
            continue
        a, b = kind.to_peft(a, b, shape)
        peft_tensors[f"{PREFIX}{path}.{kind.peft_a}"] = a.clone().contiguous()
        peft_tensors[f"{PREFIX}{path}.{kind.peft_b}"] = b.clone().contiguous()
        for suffix, t in method.peft_extra(tensors, path, kind, shape).items():
            peft_tensors[f"{PREFIX}{path}.{suffix}"] = t.clone().contiguous()
        ranks[path] = a.shape[0]
        kinds.add(kind.name)
    for key in saved_keys(meta, tensors):
        peft_tensors[PREFIX + key] = tensors[key].contiguous()
    rank = Counter(ranks.values()).most_common(1)[0][0] if ranks else config.rank

    def alpha(r: int) -> float:   # PEFT derives scale from (alpha, r): keep lorakit's exactly
        return method.scale_for(config) * (r ** 0.5 if config.rslora else r)
    pattern = {p: r for p, r in ranks.items() if r != rank}
    peft_config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None,
        "r": rank, "lora_alpha": alpha(rank), "lora_dropout": config.dropout,
        "use_rslora": config.rslora, "bias": "none", "fan_in_fan_out": "conv1d" in kinds,
        "target_modules": list(ranks), "modules_to_save": config.modules_to_save or None,
        "init_lora_weights": True, "inference_mode": True,
        "rank_pattern": pattern, "alpha_pattern": {p: alpha(r) for p, r in pattern.items()},
        **method.peft_config,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / WEIGHTS,
                 lambda tmp: save_file(peft_tensors, tmp, metadata={"format": "pt"}))
    atomic_write(out_dir / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(peft_config,
                                                                               indent=2)))
    return out_dir


def export_peft(source, out_dir) -> Path:
    """Write an adapter file, or every named adapter of a handle, as PEFT LoRA folders.

    A handle's adapter "default" goes to `out_dir`, each other one to `out_dir/<name>`
    (where PEFT's own `save_pretrained` puts them). Returns `out_dir`.
    """
    out_dir = Path(out_dir)
    if isinstance(source, Adapters):
        for name in source.names:
            meta, tensors = payload(source, name)
            folder = out_dir if name == DEFAULT else out_dir / name
            write_peft(meta, tensors, folder, source=f"adapter {name!r}")
        return out_dir
    meta, tensors = read_adapter(source)
    return write_peft(meta, tensors, out_dir, source=str(source))


def peft_folders(peft_dir: Path, name: str | None) -> list[tuple[Path, str]]:
    """(folder, adapter name) of every PEFT adapter under `peft_dir`: the top one as `name`
    (or "default"), and, unless a name was given, each sub-folder under its own name."""
    found = []
    if (peft_dir / CONFIG).is_file():
        found.append((peft_dir, name or DEFAULT))
    if name is None and peft_dir.is_dir():
        found += [(sub, sub.name) for sub in sorted(peft_dir.iterdir())
                  if sub.is_dir() and (sub / CONFIG).is_file()]
    if not found:
        raise AdapterFileError(f"{peft_dir} is not a PEFT adapter folder: no {CONFIG}")
    return found


def import_peft(peft_dir, model: torch.nn.Module, name: str | None = None) -> Adapters:
    """Attach a PEFT LoRA folder to `model` as lorakit adapters, every named one it holds.

    With `name`, only the folder's own adapter is imported, under that name.
    """
    peft_dir = Path(peft_dir)
    adapters = None
    for folder, adapter_name in peft_folders(peft_dir, name):
        adapters = _import_one(folder, model, adapter_name)
    return adapters


def read_peft_config(peft_dir: Path) -> dict:
    """A PEFT folder's adapter_config.json, refused unless it is a plain LoRA lorakit can
    hold (one rank and alpha per adapter, no bias)."""
    config_path = peft_dir / CONFIG
    try:
        pc = json.loads(config_path.read_text())
    except ValueError as err:
        raise AdapterFileError(f"{config_path} is not valid JSON ({err})") from None
    if pc.get("peft_type") != "LORA":
        raise AdapterFileError(f"{config_path}: peft_type {pc.get('peft_type')!r}; lorakit "
                               "imports LORA adapters only")
    unsupported = [k for k in ("rank_pattern", "alpha_pattern", "lora_bias") if pc.get(k)]
    if unsupported:
        raise AdapterFileError(f"{config_path} uses {unsupported}, which lorakit does not "
                               "import (one rank and alpha per adapter, no bias)")
    return pc


def read_peft(peft_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """A PEFT adapter folder's `adapter_config.json` and its tensors, keyed by module path
    (`<path>.lora_A.weight`, PEFT's `base_model.model.` prefix removed). Refuses a pickled
    `adapter_model.bin`, a corrupt file and an init that changed the base weights."""
    config_path, weights = peft_dir / CONFIG, peft_dir / WEIGHTS
    if not weights.is_file():
        pickled = peft_dir / "adapter_model.bin"
        hint = (" It has adapter_model.bin, a pickle, which lorakit never loads: re-save it "
                "with save_pretrained(..., safe_serialization=True).") if pickled.exists() else ""
        raise AdapterFileError(f"{peft_dir} has no {WEIGHTS}.{hint}")
    pc = read_peft_config(peft_dir)
    init = str(pc.get("init_lora_weights", True)).lower()
    if init.startswith(MUTATED_INITS):
        raise AdapterFileError(
            f"{config_path}: init_lora_weights {pc['init_lora_weights']!r} changed the base "
            "weights when PEFT created it, so its A and B alone are not the update. Save it "
            "with save_pretrained(..., path_initial_model_for_weight_conversion=...), which "
            "writes a plain LoRA, and import that")
    try:
        with safe_open(str(weights), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise AdapterFileError(f"{weights} is truncated or corrupt ({err})") from None
    return pc, {k.removeprefix(PREFIX): v for k, v in tensors.items()}


def peft_method(pc: dict) -> type[Variant]:
    """The method a PEFT config describes: the one whose `peft_config` keys it sets
    (`use_dora` → DoRA), plain LoRA otherwise."""
    for cls in VARIANTS.values():
        if cls.peft and cls.peft_config and all(pc.get(k) == v
                                                for k, v in cls.peft_config.items()):
            return cls
    return LoRA


def _import_one(peft_dir: Path, model: torch.nn.Module, name: str) -> Adapters:
    pc, stripped = read_peft(peft_dir)
    method = peft_method(pc)
    suffixes = {"lora_A.weight": "lora_B.weight", "lora_embedding_A": "lora_embedding_B"}
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key in stripped:
        for a_suffix, b_suffix in suffixes.items():
            if key.endswith("." + a_suffix):
                path = key[: -len(a_suffix) - 1]
                factors[path] = (stripped[key], stripped[f"{path}.{b_suffix}"])
    if not factors:
        raise AdapterFileError(f"{peft_dir / WEIGHTS} holds no lora_A weights")
    state, layer_keys = {}, set()
    for path, (a, b) in factors.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise AdapterMismatchError(
                f"PEFT adapter {peft_dir} adapts module {path!r}, which this "
                f"{type(model).__name__} does not have; load it onto the model it was "
                "trained on") from None
        base = module.base if isinstance(module, LoRALayer) else module
        kind = kind_of(base)
        if kind is None:
            raise AdapterMismatchError(f"PEFT adapter {peft_dir}: module {path!r} is a "
                                       f"{type(base).__name__}, which lorakit cannot adapt")
        a, b = kind.from_peft(a, b)
        if kind.matrix_shape(weight_shape(base)) != (b.shape[0], a.shape[1]):
            raise AdapterMismatchError(
                f"PEFT adapter {peft_dir} was made for another base model: module {path!r} "
                f"has an update of {b.shape[0]} x {a.shape[1]} there but is "
                f"{describe(base)} here")
        state[f"{path}.lora_A"], state[f"{path}.lora_B"] = a, b
        layer = {k for k in stripped if k.startswith(path + ".")}
        extra = {k[len(path) + 1:]: stripped[k] for k in layer
                 if not any(k.endswith(s) for p in suffixes.items() for s in p)}
        own = method.from_peft_extra(extra, path, kind, weight_shape(base))
        if extra and not own:
            raise AdapterFileError(f"PEFT adapter {peft_dir}: module {path!r} has tensors "
                                   f"{sorted(extra)} that lorakit's {method.method} does not read")
        state.update(own)
        layer_keys.update(layer)
    state.update({k: v for k, v in stripped.items() if k not in layer_keys})
    config = LoRAConfig(method=method.method, rank=int(pc["r"]), alpha=float(pc["lora_alpha"]),
                        dropout=float(pc.get("lora_dropout") or 0.0),
                        rslora=bool(pc.get("use_rslora")), targets=list(factors),
                        modules_to_save=list(pc.get("modules_to_save") or []))
    adapters = attach(model, config, name)
    try:
        for key, value in adapters.state_dict(name).items():
            state.setdefault(key, value)   # buffers PEFT does not save keep the model's values
        adapters.load_state_dict(state, source=f"PEFT adapter {peft_dir}", name=name)
    except Exception:
        adapters.delete(name)
        raise
    return adapters
