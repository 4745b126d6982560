"""What `lorakit adapter inspect` shows: metadata, parameter count, per-module rank and sparsity."""
from __future__ import annotations

import torch

from .config import LoRAConfig


def effective_rank(lam: torch.Tensor, tol: float) -> int:
    return int((lam.abs() > tol).sum())


def describe(meta: dict, tensors: dict[str, torch.Tensor], tol: float = 1e-3) -> dict:
    config = LoRAConfig.from_dict(meta["config"])
    modules = []
    for path, shape in meta["fingerprint"].items():
        if f"{path}.lora_A" in tensors:
            r = tensors[f"{path}.lora_A"].shape[0]
            # the rank the update really has, not the nominal r
            delta = tensors[f"{path}.lora_B"].float() @ tensors[f"{path}.lora_A"].float()
            eff = int(torch.linalg.matrix_rank(delta)) if delta.abs().max() > 0 else 0
            modules.append({"module": path, "shape": shape, "rank": r, "effective_rank": eff,
                            "sparsity": 0.0})
        elif f"{path}.lora_lambda" in tensors:
            lam = tensors[f"{path}.lora_lambda"]
            eff = effective_rank(lam, tol)
            modules.append({"module": path, "shape": shape, "rank": lam.numel(),
                            "effective_rank": eff, "sparsity": 1.0 - eff / max(lam.numel(), 1)})
    return {
        "method": config.method, "rank": config.rank, "alpha": config.alpha,
        "scale": config.scale, "rslora": config.rslora, "targets": config.targets,
        "modules_to_save": config.modules_to_save, "lorakit_version": meta.get("version"),
        "base_fingerprint": meta.get("fingerprint_sha256"),
        "parameters": sum(t.numel() for t in tensors.values()),
        "file_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "extra": meta.get("extra", {}), "modules": modules,
    }
