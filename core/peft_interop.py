"""Plain LoRA adapters to and from PEFT's on-disk layout.

    out_dir/adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha", ...}
    out_dir/adapter_model.safetensors  base_model.model.<path>.lora_A.weight (r × in)
                                       base_model.model.<path>.lora_B.weight (out × r)
                                       base_model.model.<module>.<param>   (modules_to_save)

so `peft.PeftModel.from_pretrained(model, out_dir)` (and transformers/diffusers,
which read the same files) load what lorakit trained. S2-LoRA exports too: each
matrix gets A and B·diag(λᵢ), which is exactly its update. PEFT scales by
lora_alpha / r just as lorakit does, so alpha and rank carry over unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .adapter_file import read_adapter
from .atomic import atomic_write
from .config import LoRAConfig
from .errors import AdapterFileError
from .inject import Adapters, attach, check_fingerprint

PREFIX = "base_model.model."


def export_peft(adapter_file, out_dir) -> Path:
    """Write `adapter_file` as a PEFT LoRA folder; returns the folder."""
    meta, tensors = read_adapter(adapter_file)
    config = LoRAConfig.from_dict(meta["config"])
    out_dir = Path(out_dir)
    layers = [p for p, shape in meta["fingerprint"].items() if f"{p}.lora_lambda" in tensors
              or f"{p}.lora_A" in tensors]
    peft_tensors: dict[str, torch.Tensor] = {}
    for path in layers:
        if config.method == "lora":
            a, b = tensors[f"{path}.lora_A"], tensors[f"{path}.lora_B"]
        else:
            out_f, in_f = meta["fingerprint"][path]
            key = f"shared.{in_f}x{out_f}"
            a = tensors[f"{key}.lora_A"]
            b = tensors[f"{key}.lora_B"] * tensors[f"{path}.lora_lambda"]
        peft_tensors[f"{PREFIX}{path}.lora_A.weight"] = a.clone().contiguous()
        peft_tensors[f"{PREFIX}{path}.lora_B.weight"] = b.contiguous()
    layer_keys = {f"{p}.{s}" for p in layers for s in ("lora_A", "lora_B", "lora_lambda")}
    for key, value in tensors.items():
        if key not in layer_keys and not key.startswith("shared."):
            peft_tensors[PREFIX + key] = value.contiguous()
    ranks = {a.shape[0] for k, a in peft_tensors.items() if k.endswith(".lora_A.weight")}
    rank = ranks.pop() if len(ranks) == 1 else config.rank
    # PEFT derives scale from (alpha, r); keep lorakit's scale exactly
    alpha = config.scale * (rank ** 0.5 if config.rslora else rank)
    peft_config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None,
        "r": rank, "lora_alpha": alpha, "lora_dropout": config.dropout,
        "use_rslora": config.rslora, "bias": "none", "fan_in_fan_out": False,
        "target_modules": layers, "modules_to_save": config.modules_to_save or None,
        "init_lora_weights": True, "inference_mode": True,
        "rank_pattern": {}, "alpha_pattern": {},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "adapter_model.safetensors",
                 lambda tmp: save_file(peft_tensors, tmp, metadata={"format": "pt"}))
    atomic_write(out_dir / "adapter_config.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(peft_config, indent=2)))
    return out_dir


def import_peft(peft_dir, model: torch.nn.Module) -> Adapters:
    """Attach a PEFT LoRA adapter folder to `model` as lorakit adapters."""
    peft_dir = Path(peft_dir)
    config_path = peft_dir / "adapter_config.json"
    weights = peft_dir / "adapter_model.safetensors"
    if not config_path.is_file():
        raise AdapterFileError(f"{peft_dir} is not a PEFT adapter folder: no adapter_config.json")
    if not weights.is_file():
        pickled = peft_dir / "adapter_model.bin"
        hint = (" It has adapter_model.bin, a pickle, which lorakit never loads: re-save it "
                "with save_pretrained(..., safe_serialization=True).") if pickled.exists() else ""
        raise AdapterFileError(f"{peft_dir} has no adapter_model.safetensors.{hint}")
    try:
        pc = json.loads(config_path.read_text())
    except ValueError as err:
        raise AdapterFileError(f"{config_path} is not valid JSON ({err})") from None
    if pc.get("peft_type") != "LORA":
        raise AdapterFileError(f"{config_path}: peft_type {pc.get('peft_type')!r}; lorakit "
                               "imports LORA adapters only")
    unsupported = [k for k in ("rank_pattern", "alpha_pattern") if pc.get(k)]
    unsupported += [k for k in ("use_dora", "lora_bias") if pc.get(k)]
    if unsupported:
        raise AdapterFileError(f"{config_path} uses {unsupported}, which lorakit does not import")
    try:
        with safe_open(str(weights), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise AdapterFileError(f"{weights} is truncated or corrupt ({err})") from None
    stripped = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in tensors.items()}
    paths = sorted({k[: -len(".lora_A.weight")] for k in stripped if k.endswith(".lora_A.weight")})
    if not paths:
        raise AdapterFileError(f"{weights} holds no lora_A weights")
    saved = list(pc.get("modules_to_save") or [])
    config = LoRAConfig(rank=int(pc["r"]), alpha=float(pc["lora_alpha"]),
                        dropout=float(pc.get("lora_dropout") or 0.0),
                        rslora=bool(pc.get("use_rslora")), targets=paths, modules_to_save=saved)
    check_fingerprint(model, {p: list(stripped[f"{p}.lora_B.weight"].shape[:1])
                              + list(stripped[f"{p}.lora_A.weight"].shape[1:]) for p in paths},
                      source=f"PEFT adapter {peft_dir}")
    adapters = attach(model, config)
    state = {}
    for p in paths:
        state[f"{p}.lora_A"] = stripped[f"{p}.lora_A.weight"]
        state[f"{p}.lora_B"] = stripped[f"{p}.lora_B.weight"]
    layer_keys = {f"{p}.lora_{s}.weight" for p in paths for s in "AB"}
    state.update({k: v for k, v in stripped.items() if k not in layer_keys})
    own = adapters.state_dict()
    for key, value in own.items():  # buffers PEFT does not save keep the model's values
        state.setdefault(key, value)
    try:
        adapters.load_state_dict(state, source=f"PEFT adapter {peft_dir}")
    except Exception:
        adapters.detach()
        raise
    return adapters
