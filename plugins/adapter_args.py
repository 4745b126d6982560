"""`plugin_adapter`: the one `adapter: LoRAConfig` argument of every plugin's module.

Every plugin's LightningModule takes its adapter as one typed argument, its default the
plugin's own recipe, so every method of the core reaches every plugin by the same keys:

    lorakit lorabert fit --model.adapter.method dora --model.adapter.rank 16

This turns that argument into the config the module attaches:

- a copy: the default in the signature is one instance shared by every call; a dict
  (what `hparams_dict` stores, so checkpoints load with torch's weights_only) is read too;
- the plugin's refusals, at construction: a method the plugin cannot train, with why;
- the flat keys older configs spelled (`model.rank: 8`, `--model.alpha 32`), read into
  the config with a DeprecationWarning naming the new key (`model.adapter.rank`).
"""
from __future__ import annotations

import dataclasses
import warnings

from lorakit.config import LoRAConfig
from lorakit.errors import LoraKitError

#: what every plugin whose loop runs no gradient-based initialisation refuses, and why
NO_GRADIENT_INIT = {method: (
    "its A and B come from lorakit.init_from_gradients on a few batches of full gradients, "
    "which this plugin's loop does not run; without it the adapter is not the method")
    for method in ("lora_sb", "lora_ga")}


def plugin_adapter(plugin: str, adapter: LoRAConfig, *,
                   deprecated: dict[str, tuple[str, object]] | None = None,
                   refuse: dict[str, str] | None = None) -> LoRAConfig:
    """The adapter `plugin`'s module attaches.

    Args:
        plugin: the plugin's name, for messages.
        adapter: the module's `adapter` argument (a LoRAConfig, or its dict).
        deprecated: old flat key -> (LoRAConfig field, value given; None: not given).
        refuse: method -> why this plugin cannot train it.
    """
    if isinstance(adapter, dict):
        adapter = LoRAConfig.from_dict(adapter)
    if not isinstance(adapter, LoRAConfig):
        raise LoraKitError(f"{plugin}: model.adapter must be a LoRAConfig (its fields as "
                           f"model.adapter.<field>), got {type(adapter).__name__}; an adapter "
                           "file to start from is model.adapter_file")
    changes = {}
    for old, (field, value) in (deprecated or {}).items():
        if value is None:
            continue
        warnings.warn(f"{plugin}: model.{old} is deprecated; use model.adapter.{field} "
                      f"(--model.adapter.{field})", DeprecationWarning, stacklevel=3)
        changes[field] = value
    config = dataclasses.replace(adapter, **changes)
    reason = (refuse or {}).get(config.method)
    if reason:
        raise LoraKitError(f"{plugin}: model.adapter.method {config.method!r} is not "
                           f"available here: {reason}")
    return config


def hparams_dict(config: LoRAConfig) -> dict:
    """`config` as plain values for `hparams`: a checkpoint holding a LoRAConfig object
    would not load with torch's weights_only unpickler."""
    return dataclasses.asdict(config)
