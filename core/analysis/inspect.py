"""What `lorakit adapter inspect` shows: metadata, parameter count, per-module rank and use."""
from __future__ import annotations

import torch

from ..config import CORE_FIELDS, LoRAConfig
from ..io.adapter_file import layer_entries
from ..variants import variant_named


def describe(meta: dict, tensors: dict[str, torch.Tensor], tol: float = 1e-3) -> dict:
    config = LoRAConfig.from_dict(meta["config"])
    method = variant_named(config.method)
    modules = []
    for path, kind, shape in layer_entries(meta):
        rank = method.file_rank(tensors, path, kind, shape)
        # the rank the update really has (S2-LoRA: ranks with |λ| > tol), not the nominal r
        active = method.file_active_rank(tensors, path, kind, shape, tol)
        modules.append({"module": path, "kind": kind.name, "shape": shape, "rank": rank,
                        "effective_rank": active, "sparsity": 1.0 - active / max(rank, 1),
                        **method.file_info(tensors, path, kind, shape)})
    return {
        "name": meta.get("name"), "method": config.method, "rank": config.rank,
        "alpha": config.alpha, "scale": method.scale_for(config), "rslora": config.rslora,
        "targets": config.targets, "modules_to_save": config.modules_to_save,
        "format": meta.get("format"), "lorakit_version": meta.get("version"),
        "base_fingerprint": meta.get("fingerprint_sha256"),
        "parameters": sum(t.numel() for t in tensors.values()),
        "file_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "extra": meta.get("extra", {}), "modules": modules,
        # the method's own settings (a mixture's router, top_k, expert allocation)
        "options": {**{k: getattr(config, k) for k in method.options},
                    **{k: v for k, v in config.to_dict().items() if k not in CORE_FIELDS}},
    }
