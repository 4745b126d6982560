"""lorakit: one LoRA core, many domains.

    import lorakit
    cfg = lorakit.LoRAConfig(rank=8, alpha=16, targets=["*.query", "*.value"])
    adapters = lorakit.attach(model, cfg)                   # adapter "default", active
    lorakit.attach(model, other_cfg, name="child")          # a second one, inactive
    adapters.set_active({"default": 1.0, "child": 0.5})     # or one name, or None
    with adapters.route(torch.tensor([0, 1, -1])):          # one adapter per batch row
        model(x)
    adapters.save("a.safetensors", name="default")
    lorakit.load_adapter(other_model, "a.safetensors", name="default")
    pool = lorakit.AdapterPool(model, "adapters/", max_resident_bytes=2**28)   # serving
    lorakit.generate(model, pool, [{"prompt": ids, "adapter": "a"}, {"prompt": ids}])
    lorakit.merge_adapters(["a.safetensors", "b.safetensors"], method="lego", k=8,
                           out="ab.safetensors")          # several adapters -> one
    lorakit.quantize(model, "nf4")                          # a QLoRA base (bitsandbytes, HQQ)
    moe = lorakit.LoRAConfig(method="mixture", targets=["*.dense"],
                             mixture=lorakit.MixtureOptions(n_experts=8, top_k=2))
    loss = task_loss + sum(adapters.loss_terms().values())  # every method's extra losses
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

# Public names are imported on first use (PEP 562), so that `import lorakit.registry`
# or `lorakit --help` does not pay for torch and Lightning. Each name's home module:
_HOMES = {
    "read_adapter": "lorakit.io.adapter_file",
    "save_adapter": "lorakit.io.adapter_file",
    "AdapterEMA": "lorakit.training.averaging",
    "LoRAConfig": "lorakit.config",
    "ALLoRAOptions": "lorakit.config",
    "BALoRAOptions": "lorakit.config",
    "GGPOOptions": "lorakit.config",
    "L4QOptions": "lorakit.config",
    "LoRAGAOptions": "lorakit.config",
    "LoRASBOptions": "lorakit.config",
    "MixtureOptions": "lorakit.config",
    "AdapterModule": "lorakit.training.module",
    "AdapterFileError": "lorakit.errors",
    "AdapterMismatchError": "lorakit.errors",
    "CheckpointError": "lorakit.errors",
    "DataError": "lorakit.errors",
    "LoraKitError": "lorakit.errors",
    "TargetNotFoundError": "lorakit.errors",
    "init_from_gradients": "lorakit.training.gradient_init",
    "Adapters": "lorakit.adapters",
    "adapters_of": "lorakit.adapters",
    "attach": "lorakit.adapters",
    "load_adapter": "lorakit.adapters",
    "compare_weights": "lorakit.analysis.intruders",
    "intruder_dimensions": "lorakit.analysis.intruders",
    "KINDS": "lorakit.layers.kinds",
    "LayerKind": "lorakit.layers.kinds",
    "LoRALayer": "lorakit.layers",
    "QuantizedLinear": "lorakit.layers.quantized",
    "QuantSpec": "lorakit.layers.quantized",
    "QuantizeReport": "lorakit.compress.quantize",
    "quantize": "lorakit.compress.quantize",
    "MergedAdapter": "lorakit.compose.merge_many",
    "merge_adapters": "lorakit.compose.merge_many",
    "export_peft": "lorakit.io.peft",
    "import_peft": "lorakit.io.peft",
    "AdapterPool": "lorakit.serving",
    "generate": "lorakit.serving",
    "GGPO": "lorakit.variants",
    "VARIANTS": "lorakit.variants",
    "ALLoRA": "lorakit.variants",
    "BALoRA": "lorakit.variants",
    "DoRA": "lorakit.variants",
    "L4Q": "lorakit.variants",
    "FFALoRA": "lorakit.variants",
    "LoRA": "lorakit.variants",
    "LoRAGA": "lorakit.variants",
    "LoRASB": "lorakit.variants",
    "Mixture": "lorakit.variants",
    "S2LoRA": "lorakit.variants",
    "SharedBasis": "lorakit.variants",
    "Variant": "lorakit.variants",
    "XLoRA": "lorakit.variants.mixture.xlora",
    "__version__": "lorakit.version",
}

if TYPE_CHECKING:  # the same names, for type checkers and docs tools
    from lorakit.adapters import Adapters, adapters_of, attach, load_adapter
    from lorakit.analysis.intruders import compare_weights, intruder_dimensions
    from lorakit.compose.merge_many import MergedAdapter, merge_adapters
    from lorakit.compress.quantize import QuantizeReport, quantize
    from lorakit.config import (
        ALLoRAOptions,
        BALoRAOptions,
        GGPOOptions,
        L4QOptions,
        LoRAConfig,
        LoRAGAOptions,
        LoRASBOptions,
        MixtureOptions,
    )
    from lorakit.errors import (
        AdapterFileError,
        AdapterMismatchError,
        CheckpointError,
        DataError,
        LoraKitError,
        TargetNotFoundError,
    )
    from lorakit.io.adapter_file import read_adapter, save_adapter
    from lorakit.io.peft import export_peft, import_peft
    from lorakit.layers import LoRALayer
    from lorakit.layers.kinds import KINDS, LayerKind
    from lorakit.layers.quantized import QuantizedLinear, QuantSpec
    from lorakit.serving import AdapterPool, generate
    from lorakit.training.averaging import AdapterEMA
    from lorakit.training.gradient_init import init_from_gradients
    from lorakit.training.module import AdapterModule
    from lorakit.variants import (
        GGPO,
        L4Q,
        VARIANTS,
        ALLoRA,
        BALoRA,
        DoRA,
        FFALoRA,
        LoRA,
        LoRAGA,
        LoRASB,
        Mixture,
        S2LoRA,
        SharedBasis,
        Variant,
    )
    from lorakit.variants.mixture.xlora import XLoRA
    from lorakit.version import __version__

__all__ = [
    "__version__", "AdapterEMA", "AdapterFileError", "AdapterMismatchError",
    "AdapterModule", "AdapterPool", "Adapters", "adapters_of", "ALLoRA", "ALLoRAOptions",
    "attach", "BALoRA", "BALoRAOptions", "CheckpointError", "compare_weights", "DataError",
    "DoRA", "export_peft", "FFALoRA", "generate", "GGPO", "GGPOOptions", "import_peft",
    "init_from_gradients", "intruder_dimensions", "KINDS", "L4Q", "L4QOptions", "LayerKind",
    "load_adapter",
    "LoRA", "LoRAConfig", "LoRAGA", "LoRAGAOptions", "LoraKitError", "LoRALayer", "LoRASB",
    "LoRASBOptions", "merge_adapters", "MergedAdapter", "Mixture", "MixtureOptions",
    "quantize", "QuantizedLinear", "QuantizeReport", "QuantSpec", "read_adapter", "S2LoRA", "save_adapter", "SharedBasis", "TargetNotFoundError",
    "Variant", "VARIANTS", "XLoRA",
]


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
