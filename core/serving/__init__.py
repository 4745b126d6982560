"""Serving many adapters behind one base model (S-LoRA): the adapter pool, batched
generation with continuous batching, and the OpenAI-compatible HTTP server
(`lorakit serve`, in `server.py`, imported only when used: it needs the `serve` extra)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

# imported on first use (PEP 562): `lorakit --help` builds `serve`'s options from
# command.py without loading torch through the engine and the pool
_HOMES = {**dict.fromkeys(("Completion", "Engine", "PromptTooLongError", "Request", "generate"),
                          "lorakit.serving.engine"),
          **dict.fromkeys(("AdapterPool", "AdapterUnavailableError", "PoolBusy",
                           "UnknownAdapterError"), "lorakit.serving.pool")}

if TYPE_CHECKING:
    from lorakit.serving.engine import Completion, Engine, PromptTooLongError, Request, generate
    from lorakit.serving.pool import (
        AdapterPool,
        AdapterUnavailableError,
        PoolBusy,
        UnknownAdapterError,
    )

__all__ = ["AdapterPool", "AdapterUnavailableError", "Completion", "Engine", "PoolBusy",
           "PromptTooLongError", "Request", "UnknownAdapterError", "generate"]


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
