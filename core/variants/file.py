"""The file-tensor side of a method: what it is in an adapter file, with no live layer.

`adapter merge`, `adapter inspect`, `export-peft`, `import_peft`, merging many adapters
and the serving pool read adapter files without building a model. They call these
classmethods on the method's class with the file's tensors, a module path, its layer
kind and its base weight shape, and nothing else.

Required of a new method: `file_keys` and `file_factors` (or `file_delta` where ΔW is
not a product B A, as DoRA's and a mixture's are). The rest have defaults that hold for
any product B A.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from ..config import LoRAConfig
from ..layers.kinds import LayerKind


class VariantFile:
    """ΔW, ranks and PEFT's layout of one module, from file tensors alone."""

    # --- PEFT's layout -----------------------------------------------------------------
    peft: ClassVar[bool] = True                  # PEFT's LoRA layout holds it exactly
    peft_config: ClassVar[dict] = {}             # adapter_config.json keys it sets ({"use_dora": True})
    peft_refusal: ClassVar[str] = ""             # why `export-peft` refuses it (peft False)
    options: ClassVar[tuple[str, ...]] = ()      # LoRAConfig fields it reads (for inspect)

    # --- required ----------------------------------------------------------------------
    @classmethod
    def file_keys(cls, path: str, kind: type[LayerKind], weight_shape) -> list[str]:
        """The keys a file holds for this module (its own and the shared ones it uses)."""
        raise NotImplementedError

    @classmethod
    def file_factors(cls, tensors: dict[str, torch.Tensor], path: str,
                     kind: type[LayerKind], weight_shape) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B), unscaled, of module `path` read from an adapter file's tensors."""
        raise NotImplementedError

    # --- defaults for a product B A ------------------------------------------------------
    @classmethod
    def keys_for(cls, config: LoRAConfig, path: str, kind: type[LayerKind],
                 weight_shape) -> list[str]:
        """`file_keys` for a file written with `config`, for methods whose keys depend on
        it (a mixture's experts: their method's keys); default `file_keys`."""
        return cls.file_keys(path, kind, weight_shape)

    @classmethod
    def file_delta(cls, tensors, path, kind: type[LayerKind], weight_shape, scale: float,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
        """scale · B A in the base weight's layout, from file tensors (and, for methods whose
        update depends on it, the base `weight`)."""
        a, b = cls.file_factors(tensors, path, kind, weight_shape)
        return kind.to_weight(scale * (b.float() @ a.float()), weight_shape)

    @classmethod
    def file_rank(cls, tensors, path, kind, weight_shape) -> int:
        """The nominal rank of module `path` in a file."""
        return int(cls.file_factors(tensors, path, kind, weight_shape)[0].shape[0])

    @classmethod
    def file_active_rank(cls, tensors, path, kind, weight_shape, tol: float) -> int:
        """Ranks in use: the rank the update really has, not the nominal r."""
        a, b = cls.file_factors(tensors, path, kind, weight_shape)
        delta = b.float() @ a.float()
        return int(torch.linalg.matrix_rank(delta)) if delta.abs().max() > 0 else 0

    @classmethod
    def file_info(cls, tensors, path, kind, weight_shape) -> dict:
        """Method-specific facts about module `path` for `adapter inspect` (a mixture's
        experts and their load); default none."""
        return {}

    @classmethod
    def peft_extra(cls, tensors, path, kind: type[LayerKind],
                   weight_shape) -> dict[str, torch.Tensor]:
        """PEFT tensors of module `path` beyond A and B, by key suffix in PEFT's layout
        (DoRA: {"lora_magnitude_vector": m}); default none."""
        return {}

    @classmethod
    def from_peft_extra(cls, extra: dict[str, torch.Tensor], path, kind: type[LayerKind],
                        weight_shape) -> dict[str, torch.Tensor]:
        """The inverse of `peft_extra`: file tensors of module `path` (full keys) from the
        PEFT tensors under it other than A and B ({suffix: tensor}); default none."""
        return {}
