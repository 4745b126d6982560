"""The wrapped layer (`layer.py`) and the base-module kinds it wraps (`kinds.py`)."""
from .kinds import KINDS, LayerKind, kind_named, kind_of
from .layer import LoRALayer, variant_layers

__all__ = ["KINDS", "LayerKind", "LoRALayer", "kind_named", "kind_of", "variant_layers"]
