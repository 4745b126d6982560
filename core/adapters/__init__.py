"""The handle of a model's adapters: `attach` puts named adapters into any `nn.Module`,
`Adapters` lists, activates, routes, saves, merges and deletes them."""
from .handle import (
    DEFAULT,
    ActiveSpec,
    Adapters,
    adaptable_modules,
    adapters_of,
    attach,
    check_fingerprint,
    describe,
    find_modules,
    find_targets,
    load_adapter,
    matches,
)

__all__ = ["DEFAULT", "ActiveSpec", "Adapters", "adaptable_modules", "adapters_of", "attach",
           "check_fingerprint", "describe", "find_modules", "find_targets", "load_adapter",
           "matches"]
