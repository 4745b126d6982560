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
    moe = lorakit.LoRAConfig(method="mixture", n_experts=8, top_k=2, targets=["*.dense"])
    loss = task_loss + sum(adapters.loss_terms().values())  # every method's extra losses
"""
from .adapters import Adapters, adapters_of, attach, load_adapter
from .analysis.intruders import compare_weights, intruder_dimensions
from .compose.merge_many import MergedAdapter, merge_adapters
from .config import LoRAConfig
from .errors import (
                     AdapterFileError,
                     AdapterMismatchError,
                     CheckpointError,
                     DataError,
                     LoraKitError,
                     TargetNotFoundError,
)
from .io.adapter_file import read_adapter, save_adapter
from .io.peft import export_peft, import_peft
from .layers import LoRALayer
from .layers.kinds import KINDS, LayerKind
from .serving import AdapterPool, generate
from .training.averaging import AdapterEMA
from .training.gradient_init import init_from_gradients
from .variants import (
                     GGPO,
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
from .variants.mixture.xlora import XLoRA
from .version import __version__

__all__ = [
    "GGPO", "KINDS", "VARIANTS", "ALLoRA", "AdapterEMA", "AdapterFileError", "AdapterPool",
    "AdapterMismatchError", "Adapters", "BALoRA", "CheckpointError", "DataError", "DoRA",
    "FFALoRA", "LayerKind", "LoRA", "LoRAConfig", "LoRAGA", "LoRALayer", "LoRASB",
    "LoraKitError", "MergedAdapter", "Mixture", "S2LoRA", "SharedBasis", "TargetNotFoundError", "Variant",
    "__version__", "adapters_of", "attach", "compare_weights", "export_peft", "import_peft",
    "generate", "init_from_gradients", "intruder_dimensions", "load_adapter", "merge_adapters",
    "read_adapter", "save_adapter", "XLoRA",
]
