"""`attach`, `adapters_of`, `load_adapter`: the entry points that give a model its handle.

A model has at most one `Adapters` handle; `attach` makes it with the first adapter
and adds to it after that, `load_adapter` attaches what a file describes and loads its
tensors, refusing a file made for another base before anything changes.
"""
from __future__ import annotations

from torch import nn

from ..config import LoRAConfig
from ..errors import AdapterMismatchError, LoraKitError
from ..io.adapter_file import read_adapter
from ..layers import LoRALayer
from .fingerprint import check_fingerprint, check_precision
from .handle import _HANDLES, DEFAULT, Adapters


def attach(model: nn.Module, config: LoRAConfig, name: str = DEFAULT) -> Adapters:
    """Add adapter `name` to the modules matching `config.targets`, freeze the base.

    The first adapter of a model is active; later ones are added inactive, as in PEFT
    (`set_active` chooses). Returns the model's one handle.
    """
    handle = _HANDLES.get(model)
    if handle is None:
        if any(isinstance(m, LoRALayer) for m in model.modules()):
            raise LoraKitError(f"{type(model).__name__} carries lorakit layers this handle does not "
                               "own: adapters attached to another module (its parent or a copy; "
                               "attach to that one) or an AdapterPool's (close() it first)")
        handle = Adapters(model)
        try:
            handle.add(config, name)
        except Exception:
            handle.detach()
            raise
        _HANDLES[model] = handle
        return handle
    return handle.add(config, name)


def adapters_of(model: nn.Module) -> Adapters | None:
    """The handle of a model's adapters, or None if it carries none."""
    return _HANDLES.get(model)

def load_adapter(model: nn.Module, path, name: str = DEFAULT,
                 allow_other_precision: bool = False) -> Adapters:
    """Attach the adapter a file describes to `model` as `name` and load its weights.

    Refuses (AdapterMismatchError) a file made for another base, naming the first
    module that differs, and one trained on a base of another precision (a QLoRA
    adapter onto a full-precision base, an nf4 one onto int4) unless
    `allow_other_precision`; a refused load leaves the model as it was. Loading never
    quantizes the base: `lorakit.quantize(model, spec)` first does.
    """
    meta, tensors = read_adapter(path)
    check_fingerprint(model, meta["fingerprint"], meta["kinds"], source=f"adapter {path}")
    check_precision(model, meta, source=f"adapter {path}", allow=allow_other_precision)
    adapters = attach(model, LoRAConfig.from_dict(meta["config"]), name)
    try:
        if set(adapters.fingerprint(name)) != set(meta["fingerprint"]):
            extra = sorted(set(adapters.fingerprint(name)) - set(meta["fingerprint"]))
            raise AdapterMismatchError(
                f"adapter {path}: its target patterns match more modules in this model than "
                f"in the base it was made for (e.g. {extra[:3]}); load it onto the model it "
                "was trained on")
        adapters.load_state_dict(tensors, source=f"adapter {path}", name=name)
    except Exception:
        adapters.delete(name)
        raise
    return adapters
