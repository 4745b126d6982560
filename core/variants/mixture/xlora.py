r"""X-LoRA (Buehler & Buehler 2024): trained adapters, frozen, mixed per layer and per token.

    pass 1 (no grad, adapters off: the base)   x ─► model ─► hidden states H (batch, tokens, d)
    scaling head (the only thing that trains)  H ─► MLP ─► logits (batch, tokens, L, n)
                                                        ─► softmax over the n adapters / T
    pass 2                                     x ─► model, layer l adds Σ_a s[b, t, l, a]·ΔW_a x

n named adapters, each trained on its own (lorakit files, or PEFT folders through
`lorakit.import_peft`), sit on the model as frozen plain LoRAs; the head reads the last
hidden state of a first pass and outputs one scaling per adapted layer (L), token and
adapter, which the second pass applies (sec. 2 of the paper, its "dual-pass" design; the
first pass runs with every scaling at zero, PEFT's default `scaling_pass_value`, which is
the frozen base). The head's options follow PEFT's `XLoraConfig` (`xlora_depth`,
`xlora_size`, `layerwise_scalings`, `enable_softmax`, `softmax_temperature`,
`top_k_lora`), so a head maps to it field by field. Its last layer starts at zero: the
first scalings are 1/n everywhere, the adapters' plain average.

The second pass gathers nothing per token: every adapter's A and B are stacked once
(`LoRALayer.cached_stacks`, the routed batch's stacks) and one pair of matmuls applies
them all with per-token weights (`mixture.mixed`).
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ...atomic import atomic_write
from ...errors import AdapterFileError, AdapterMismatchError, LoraKitError


def last_hidden(outputs) -> torch.Tensor:
    """The (batch, tokens, d) hidden states of a model's outputs: `last_hidden_state`, the
    last of `hidden_states`, or the outputs themselves."""
    for attr in ("last_hidden_state", "hidden_states"):
        value = getattr(outputs, attr, None)
        if value is not None:
            return value[-1] if isinstance(value, (tuple, list)) else value
    if isinstance(outputs, torch.Tensor):
        return outputs
    raise LoraKitError(f"X-LoRA: cannot find hidden states in a {type(outputs).__name__}; pass "
                       "hidden_of=... that returns the (batch, tokens, d) tensor to read")


class XLoRA(nn.Module):
    """A scaling head over frozen named adapters `names` of a handle; call it with a function
    that runs the model (twice: a scaling pass and the scaled pass)."""

    def __init__(self, adapters, names: Sequence[str], hidden_size: int, xlora_depth: int = 1,
                 xlora_size: int = 64, layerwise_scalings: bool = True,
                 enable_softmax: bool = True, softmax_temperature: float = 1.0,
                 top_k_lora: int | None = None,
                 hidden_of: Callable[[object], torch.Tensor] = last_hidden) -> None:
        super().__init__()
        names = [adapters._one(n) for n in names]
        if len(names) < 2:
            raise LoraKitError(f"X-LoRA mixes several adapters; it was given {names}")
        if top_k_lora is not None and not 1 <= top_k_lora <= len(names):
            raise LoraKitError(f"X-LoRA: top_k_lora={top_k_lora} must be in 1..{len(names)}")
        self.adapters, self.names, self.hidden_of = adapters, names, hidden_of
        self.paths = [p for p, layer in adapters.layers.items()
                      if any(n in layer.variants for n in names)]
        for path in self.paths:
            layer = adapters.layers[path]
            if not layer.kind.float_input or not layer.kind.routable:
                raise LoraKitError(f"X-LoRA: module {path!r} is a {layer.kind.describe()}; "
                                   "it scales Linear and Conv1D adapters per token")
            odd = [n for n in names if n in layer.variants and not layer.variants[n].routable]
            if odd:
                raise LoraKitError(f"X-LoRA: adapter {odd[0]!r} ({layer.variants[odd[0]].method}) "
                                   "is not a plain product B·A; X-LoRA mixes LoRA-style adapters")
        for name in names:                       # the adapters stay as trained
            for p in adapters.parameters(name):
                p.requires_grad_(False)
        self.settings = {"hidden_size": hidden_size, "xlora_depth": xlora_depth,
                         "xlora_size": xlora_size, "layerwise_scalings": layerwise_scalings,
                         "enable_softmax": enable_softmax,
                         "softmax_temperature": softmax_temperature, "top_k_lora": top_k_lora}
        out = len(names) * (len(self.paths) if layerwise_scalings else 1)
        layers: list[nn.Module] = []
        width = hidden_size
        for _ in range(xlora_depth - 1):
            layers += [nn.Linear(width, xlora_size), nn.ReLU()]
            width = xlora_size
        last = nn.Linear(width, out)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.head = nn.Sequential(*layers, last)      # PEFT's XLoraClassifier.layers
        self.last_scalings: torch.Tensor | None = None

    @classmethod
    def from_files(cls, model: nn.Module, files: Mapping[str, str | Path], hidden_size: int,
                   **options) -> XLoRA:
        """Load each adapter (a lorakit file, or a PEFT folder) onto `model` under its name,
        then build the head. A file made for another base is refused by name before anything
        trains, and the model is left without the adapters loaded so far."""
        from ...adapters import adapters_of, load_adapter
        from ...io.peft import import_peft

        loaded: list[str] = []
        try:
            for name, path in files.items():
                path = Path(path)
                try:
                    handle = (import_peft(path, model, name=name) if path.is_dir()
                              else load_adapter(model, path, name=name))
                except AdapterMismatchError as err:
                    raise AdapterMismatchError(f"X-LoRA adapter {name!r}: {err}") from None
                loaded.append(name)
        except Exception:
            handle = adapters_of(model)
            for name in loaded:
                handle.delete(name)
            raise
        handle.set_active(None)
        return cls(handle, list(files), hidden_size, **options)

    # --- the scalings -----------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.paths)

    def scalings(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, layers, adapters) scalings from (batch, tokens, d) hidden states."""
        s = self.settings
        logits = self.head(hidden.to(self.head[-1].weight.dtype))
        logits = logits.reshape(*hidden.shape[:-1], -1, len(self.names))
        logits = logits.expand(*hidden.shape[:-1], self.n_layers, len(self.names))
        if s["enable_softmax"]:
            logits = torch.softmax(logits / s["softmax_temperature"], dim=-1)
        if s["top_k_lora"] is not None:    # keep each token's k largest scalings (PEFT's rule)
            top = logits.topk(s["top_k_lora"], dim=-1).indices
            logits = logits * torch.zeros_like(logits).scatter(-1, top, 1.0)
        return logits

    @contextlib.contextmanager
    def scaled(self, scalings: torch.Tensor):
        """Every adapted layer applies its slice of `scalings` inside the block."""
        from ...adapters.routing import RoutedBatch, handed

        batches = []
        for i, layer in enumerate(self.adapters.layers[p] for p in self.paths):
            present = [n for n in self.names if n in layer.variants]
            keep = [self.names.index(n) for n in present]
            batches.append((layer, RoutedBatch(present, weights=scalings[..., i, keep])))
        with handed(batches):
            yield

    def forward(self, run: Callable[[], object]):
        """Dual pass: `run()` (the model on one batch) with the adapters off, without
        gradients; the head's scalings from its hidden states; `run()` again, scaled.
        Returns the second pass's outputs."""
        with torch.no_grad(), self.adapters.disabled():
            hidden = self.hidden_of(run())
        scalings = self.scalings(hidden)
        self.last_scalings = scalings.detach()
        with self.scaled(scalings):
            return run()

    # --- the head's file --------------------------------------------------------------
    def save(self, path) -> Path:
        """The head alone (the adapters have their own files), with its settings, the adapter
        names and the adapted modules in the header."""
        meta = {"settings": self.settings, "adapters": self.names, "modules": self.paths}
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        return atomic_write(Path(path), lambda tmp: save_file(
            tensors, tmp, metadata={"lorakit_xlora": json.dumps(meta)}))

    @classmethod
    def load(cls, adapters, path) -> XLoRA:
        """A saved head onto a handle that carries the same adapters on the same modules."""
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = json.loads((f.metadata() or {})["lorakit_xlora"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:
            raise AdapterFileError(f"{path} is not a lorakit X-LoRA head ({err})") from None
        missing = [n for n in meta["adapters"] if n not in adapters.names]
        if missing:
            raise AdapterMismatchError(f"X-LoRA head {path} mixes adapters {meta['adapters']}; "
                                       f"this model lacks {missing}")
        xlora = cls(adapters, meta["adapters"], **meta["settings"])
        if xlora.paths != meta["modules"]:
            raise AdapterMismatchError(f"X-LoRA head {path} was trained with scalings for "
                                       f"{len(meta['modules'])} modules; these adapters adapt "
                                       f"{len(xlora.paths)}")
        xlora.head.load_state_dict(tensors)
        return xlora
