"""Serving many adapters behind one base model (S-LoRA): the adapter pool, batched
generation with continuous batching, and the OpenAI-compatible HTTP server
(`lorakit serve`, in `server.py`, imported only when used: it needs the `serve` extra)."""
from .engine import Completion, Engine, PromptTooLongError, Request, generate
from .pool import AdapterPool, AdapterUnavailableError, PoolBusy, UnknownAdapterError

__all__ = ["AdapterPool", "AdapterUnavailableError", "Completion", "Engine", "PoolBusy",
           "PromptTooLongError", "Request", "UnknownAdapterError", "generate"]
