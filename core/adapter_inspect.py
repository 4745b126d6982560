"""What `lorakit adapter inspect` shows: metadata, parameter count, per-module rank and use."""
from __future__ import annotations

import torch

from .adapter_file import layer_entries
from .config import LoRAConfig
from .variants import variant_named


def describe(meta: dict, tensors: dict[str, torch.Tensor], tol: float = 1e-3) -> dict:
    config = LoRAConfig.from_dict(meta["config"])
    method = variant_named(config.method)
    modules = []
    for path, kind, shape in layer_entries(meta):
        rank = method.file_factors(tensors, path, kind, shape)[0].shape[0]
        # the rank the update really has (S2-LoRA: ranks with |λ| > tol), not the nominal r
        active = method.file_active_rank(tensors, path, kind, shape, tol)
        modules.append({"module": path, "kind": kind.name, "shape": shape, "rank": rank,
                        "effective_rank": active, "sparsity": 1.0 - active / max(rank, 1)})
    return {
        "name": meta.get("name"), "method": config.method, "rank": config.rank,
        "alpha": config.alpha, "scale": method.scale_for(config), "rslora": config.rslora,
        "targets": config.targets, "modules_to_save": config.modules_to_save,
        "format": meta.get("format"), "lorakit_version": meta.get("version"),
        "base_fingerprint": meta.get("fingerprint_sha256"),
        "parameters": sum(t.numel() for t in tensors.values()),
        "file_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "extra": meta.get("extra", {}), "modules": modules,
    }
