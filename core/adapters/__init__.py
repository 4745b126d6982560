"""The handle of a model's adapters, split by job.

    handle.py       Adapters: naming, add/delete, activate, merge, save
    entry.py        attach, adapters_of, load_adapter: how a model gets its handle
    targets.py      target patterns and the public wrap / unwrap of one module
    state.py        parameters, optimizer groups, state dicts
    fingerprint.py  what an adapter file is checked against (shapes, base precision)
    routing.py      RoutedBatch, the object a routed forward hands its layers
    hooks.py        the methods' training hooks and the one `loss_terms` channel
"""
from .entry import adapters_of, attach, load_adapter
from .fingerprint import check_fingerprint, check_precision
from .handle import DEFAULT, ActiveSpec, Adapters
from .routing import RoutedBatch
from .targets import (
    adaptable_modules,
    describe,
    find_modules,
    find_targets,
    matches,
    unwrap,
    wrap,
)

__all__ = ["DEFAULT", "ActiveSpec", "Adapters", "RoutedBatch", "adaptable_modules",
           "adapters_of", "attach", "check_fingerprint", "check_precision", "describe", "find_modules",
           "find_targets", "load_adapter", "matches", "unwrap", "wrap"]
