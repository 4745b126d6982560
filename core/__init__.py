"""lorakit: one LoRA core, many domains.

    import lorakit
    cfg = lorakit.LoRAConfig(rank=8, alpha=16, targets=["*.query", "*.value"])
    adapters = lorakit.attach(model, cfg)
    adapters.save("a.safetensors")
    lorakit.load_adapter(other_model, "a.safetensors")
"""
from .adapter_file import load_adapter, read_adapter, save_adapter
from .averaging import AdapterEMA
from .config import LoRAConfig
from .errors import (
                     AdapterFileError,
                     AdapterMismatchError,
                     CheckpointError,
                     DataError,
                     LoraKitError,
                     TargetNotFoundError,
)
from .inject import Adapters, adapters_of, attach
from .layers import LoRALayer, LoRALinear, S2LoRALinear, SharedBasis
from .peft_interop import export_peft, import_peft
from .version import __version__

__all__ = [
    "AdapterEMA", "AdapterFileError", "AdapterMismatchError", "Adapters", "CheckpointError",
    "DataError",
    "LoRAConfig", "LoRALayer", "LoRALinear", "LoraKitError", "S2LoRALinear", "SharedBasis",
    "TargetNotFoundError", "__version__", "adapters_of", "attach", "export_peft",
    "import_peft", "load_adapter", "read_adapter", "save_adapter",
]
