r"""`AdapterPool`: thousands of adapters known by name, a bounded set resident on the model.

    disk ── headers read up front (names, ranks, targets, fingerprint; no tensors) ──┐
      │                                                                            │
      └─ acquire(name) ─► slot s of the unified pool (S-LoRA §4, Punica's stacks) ◄─┘
                          per adapted module:  A_stack (S+1, r_max, in)
                                               B_stack (S+1, out, r_max)   (scale folded in)
                          row S is zeros: "no adapter"

A batch routes row i to slot `slots[i]` through the same gather + batched-matmul
forward `Adapters.route` uses (a `RoutedBatch` handed to each layer, `LoRALayer.routed`
→ `LayerKind.routed`); the pool wraps the modules itself (`lorakit.adapters.wrap`,
bare layers with no adapter of their own) and only owns the stacks. `Adapters.route` stacks every attached adapter anew whenever one
of them changes, which costs the bytes of the whole resident set per load; the pool's
slots are allocated once and a load copies one adapter's tensors into its slot.

Mixed ranks are **padded**, not bucketed: every slot holds `r_max` rows (the largest
rank the pool has seen; it grows if a larger adapter arrives), a smaller adapter's
extra rows of A and columns of B are zero, which adds exactly nothing. Padding keeps
one gather and two matmuls per layer whatever the mix of ranks in a batch (bucketing
would run one pair per rank present, and split the batch); the price is r_max / r in
slot memory and adapter FLOPs for small adapters, which is small next to the base
model's own matmuls at LoRA ranks (4-64) and is counted in `max_resident_bytes`, since
it is what is really allocated.

Eviction is least-recently-used among slots no running request holds (`acquire` pins,
`release` unpins); if every slot is pinned, `acquire` raises `PoolBusy` and the caller
waits. An adapter made for another base (its fingerprint names a module this model
lacks or shapes differ), an unreadable file or a method the routed forward cannot
serve (DoRA, modules_to_save) is refused by name with the reason; the others keep
serving. Hot swap: `acquire` compares the file's mtime and size with what it read; a
replaced file is read anew and new requests get the new weights, while requests that
already hold the old slot finish on the old weights (the slot is freed when they do).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..adapters import check_fingerprint, check_precision, unwrap, wrap
from ..adapters.routing import RoutedBatch, handed
from ..config import LoRAConfig
from ..errors import AdapterFileError, AdapterMismatchError, LoraKitError
from ..io.adapter_file import FORMAT, fingerprint_hash, layer_entries, read_adapter, saved_keys
from ..io.peft import CONFIG, WEIGHTS, peft_method, read_peft, read_peft_config
from ..layers import LoRALayer
from ..layers.kinds import kind_named, kind_of, weight_device, weight_dtype, weight_shape
from ..variants import adapter_dtype, variant_named

PEFT_PREFIX = "base_model.model."
_PEFT_FACTORS = {"lora_A.weight": "lora_B.weight", "lora_embedding_A": "lora_embedding_B"}


class UnknownAdapterError(LoraKitError):
    """No adapter of that name is in the pool."""


class AdapterUnavailableError(LoraKitError):
    """The adapter is known but cannot be served (other base, unreadable file, method)."""


class PoolBusy(LoraKitError):
    """Every slot is held by a running request; try again after one finishes."""


@dataclass
class PoolEntry:
    """What the pool knows of one adapter: its header, and its slot when resident."""

    name: str
    source: Path                    # the lorakit file or the PEFT folder
    stamp: tuple[int, int]          # (mtime_ns, size) of the tensor file when it was read
    kind: str = "lorakit"           # "lorakit" or "peft"
    rank: int = 0
    layers: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    nbytes: int = 0                 # tensor bytes in the file
    error: str | None = None        # why it is refused; None when servable
    slot: int | None = None
    pins: int = 0
    loads: int = 0

    @property
    def tensor_file(self) -> Path:
        return self.source / WEIGHTS if self.kind == "peft" else self.source


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def _dtype_bytes(dtype: str) -> int:
    return {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1,
            "BOOL": 1}.get(dtype, 4)


def _shapes(file: Path) -> tuple[dict, dict[str, tuple[list[int], str]]]:
    """(header metadata, key -> (shape, dtype)) of a safetensors file, without its tensors."""
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            shapes = {k: (list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype())
                      for k in f.keys()}
    except Exception as err:   # safetensors raises its own error types and OSError
        raise AdapterFileError(f"{file} is not a readable safetensors file ({err})") from None
    return header, shapes


class AdapterPool:
    """Every adapter under `folder_or_files` by name; at most `max_resident_bytes` of them
    resident on `model` (None: room for all).

    `folder_or_files`: a folder (each `<name>.safetensors` lorakit file and each PEFT
    folder — one holding `adapter_config.json` — is an adapter named after it), a list of
    such files and folders, or a mapping name → path. An adapter trained on a base of
    another precision (a QLoRA adapter, and this model's modules full precision) is
    refused by name unless `allow_other_precision` (`lorakit.load_adapter`'s rule).
    """

    def __init__(self, model: nn.Module, folder_or_files, max_resident_bytes: int | None = None,
                 allow_other_precision: bool = False) -> None:
        if any(isinstance(m, LoRALayer) for m in model.modules()):
            raise LoraKitError("AdapterPool needs a model without lorakit adapters (it owns the "
                               "adapted layers); detach() them, or load them into the pool")
        self.model = model
        self.max_resident_bytes = max_resident_bytes
        self.allow_other_precision = allow_other_precision
        self.entries: dict[str, PoolEntry] = {}
        self._stale: list[PoolEntry] = []           # replaced files still pinned by requests
        self._sources = folder_or_files
        self._layers: dict[str, LoRALayer] = {}
        self._stacks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._owner: list[PoolEntry | None] = []     # slot -> entry
        self._clock = itertools.count()
        self._used: dict[int, int] = {}              # slot -> last use
        self.rank = 0
        self.loads = 0
        # the HTTP thread lists adapters while the engine's thread loads them
        self._lock = threading.RLock()
        self.refresh()

    # --- what the pool knows ------------------------------------------------------------
    def _listing(self) -> dict[str, Path]:
        src = self._sources
        if isinstance(src, Mapping):
            return {str(n): Path(p) for n, p in src.items()}
        paths = [Path(p) for p in ([src] if isinstance(src, (str, os.PathLike)) else src)]
        found: dict[str, Path] = {}
        for path in paths:
            if not path.exists():
                raise AdapterFileError(f"adapter source {path} does not exist")
            if path.is_dir() and not (path / CONFIG).is_file():
                for child in sorted(path.iterdir()):
                    if child.suffix == ".safetensors" or (child / CONFIG).is_file():
                        found[child.stem if child.is_file() else child.name] = child
            else:
                found[path.stem if path.suffix == ".safetensors" else path.name] = path
        return found

    def refresh(self) -> None:
        """Read the headers of new or replaced adapters, forget removed ones (unless held)."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        listing = self._listing()
        for name in list(self.entries):
            if name not in listing:
                self._retire(self.entries.pop(name))
        for name, path in listing.items():
            entry = self.entries.get(name)
            if entry is None or entry.source != path or self._changed(entry):
                if entry is not None:
                    self._retire(entry)
                self.entries[name] = self._read_header(name, path)
        self._ensure_layers()

    def _changed(self, entry: PoolEntry) -> bool:
        try:
            return _stamp(entry.tensor_file) != entry.stamp
        except OSError:
            return True

    def _retire(self, entry: PoolEntry) -> None:
        """An entry whose file was replaced or removed: free its slot now or when unpinned."""
        if entry.slot is None:
            return
        if entry.pins:
            self._stale.append(entry)
        else:
            self._free(entry)

    def _read_header(self, name: str, path: Path) -> PoolEntry:
        entry = PoolEntry(name, path, (0, 0), kind="peft" if path.is_dir() else "lorakit")
        try:
            entry.stamp = _stamp(entry.tensor_file)
            if entry.kind == "peft":
                self._peft_header(entry)
            else:
                self._lorakit_header(entry)
        except OSError as err:
            entry.error = f"adapter {name!r} ({path}) cannot be read: {err}"
        except LoraKitError as err:
            entry.error = f"adapter {name!r} is refused: {err}"
        return entry

    def _lorakit_header(self, entry: PoolEntry) -> None:
        path = entry.source
        header, shapes = _shapes(path)
        if "lorakit" not in header:
            raise AdapterFileError(f"{path} has no lorakit metadata")
        try:
            meta = json.loads(header["lorakit"])
            fmt, config, fp = int(meta["format"]), meta["config"], meta["fingerprint"]
            kinds = meta.get("kinds") or {p: "linear" for p in fp if f"{p}.lora_A" in shapes}
        except (ValueError, KeyError, TypeError) as err:
            raise AdapterFileError(f"{path} has damaged lorakit metadata ({err})") from None
        if fmt > FORMAT:
            raise AdapterFileError(f"{path} is adapter format {fmt}; this lorakit reads up to "
                                   f"{FORMAT}")
        if meta.get("fingerprint_sha256") != fingerprint_hash(fp):
            raise AdapterFileError(f"{path}: its base-model fingerprint fails its checksum")
        cls = variant_named(LoRAConfig.from_dict(config).method, source=str(path))
        self._check_servable(cls, bool(config.get("modules_to_save")), kinds, str(path))
        check_fingerprint(self.model, fp, kinds, source=f"adapter {path}")
        check_precision(self.model, {**meta, "kinds": kinds}, f"adapter {path}",
                        allow=self.allow_other_precision)
        entry.rank = int(config["rank"])
        entry.layers = {p: (k, tuple(fp[p])) for p, k in kinds.items()}
        entry.nbytes = sum(math.prod(s) * _dtype_bytes(d) for s, d in shapes.values())

    def _peft_header(self, entry: PoolEntry) -> None:
        folder = entry.source
        pc = read_peft_config(folder)
        _, shapes = _shapes(folder / WEIGHTS)
        keys = {k.removeprefix(PEFT_PREFIX): v for k, v in shapes.items()}
        layers: dict[str, tuple[str, tuple[int, ...]]] = {}
        for key, (shape_a, _) in keys.items():
            for a_suffix, b_suffix in _PEFT_FACTORS.items():
                if not key.endswith("." + a_suffix):
                    continue
                path = key[: -len(a_suffix) - 1]
                base = self._base_module(path, folder)
                kind = kind_of(base)(base)
                a, b = kind.from_peft(torch.empty(shape_a, device="meta"),
                                      torch.empty(keys[f"{path}.{b_suffix}"][0], device="meta"))
                if (b.shape[0], a.shape[1]) != kind.matrix_shape(weight_shape(base)):
                    raise AdapterMismatchError(
                        f"PEFT adapter {folder} was made for another base model: module "
                        f"{path!r} has an update of {b.shape[0]} x {a.shape[1]} there")
                layers[path] = (kind.file_name(), weight_shape(base))
        if not layers:
            raise AdapterFileError(f"{folder / WEIGHTS} holds no lora_A weights")
        self._check_servable(peft_method(pc), bool(pc.get("modules_to_save")),
                             {p: k for p, (k, _) in layers.items()}, str(folder))
        entry.rank = int(pc["r"])
        entry.layers = layers
        entry.nbytes = sum(math.prod(s) * _dtype_bytes(d) for s, d in shapes.values())

    def _base_module(self, path: str, source) -> nn.Module:
        try:
            module = self.model.get_submodule(path)
        except AttributeError:
            raise AdapterMismatchError(
                f"{source} adapts module {path!r}, which this {type(self.model).__name__} "
                "does not have: it was made for another base model") from None
        base = module.base if isinstance(module, LoRALayer) else module
        if kind_of(base) is None:
            raise AdapterMismatchError(f"{source}: module {path!r} is a "
                                       f"{type(base).__name__}, which lorakit cannot adapt")
        return base

    @staticmethod
    def _check_servable(cls, saves_modules: bool, kinds: dict[str, str], source: str) -> None:
        if not cls.routable:
            raise AdapterFileError(f"{source}: method {cls.method!r} is not a product B A per "
                                   "module, so a mixed-adapter batch cannot serve it; merge it "
                                   "into the base and serve that model instead")
        if saves_modules:
            raise AdapterFileError(f"{source} trains modules in full (modules_to_save), which "
                                   "would act on every row of a mixed batch; serve it alone")
        odd = [p for p, k in kinds.items() if not kind_named(k).routable]
        if odd:
            raise AdapterFileError(f"{source} adapts {odd[0]!r}, a {kinds[odd[0]]} layer; "
                                   "mixed-adapter batches work on Linear, Conv1D and Embedding")

    @property
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self.entries)

    def status(self, name: str) -> str:
        """"resident", "idle" or "refused: <why>"."""
        with self._lock:
            entry = self._entry(name, refresh=False)
        return (f"refused: {entry.error}" if entry.error else
                "resident" if entry.slot is not None else "idle")

    # --- the unified pool of slots ------------------------------------------------------
    def _ensure_layers(self) -> None:
        """Wrap every module some servable adapter adapts, and size the stacks."""
        wanted = {p for e in self.entries.values() if not e.error for p in e.layers}
        new = sorted(wanted - set(self._layers))
        for path in new:     # bare LoRALayers: the pool's stacks do the work
            self._layers[path] = wrap(self.model, path)
        if new:
            order = {p: i for i, (p, _) in enumerate(self.model.named_modules())}
            self._layers = dict(sorted(self._layers.items(), key=lambda kv: order[kv[0]]))
        rank = max([e.rank for e in self.entries.values() if not e.error] + [self.rank, 1])
        self._resize(rank, self._slot_count(rank, wanted))

    def _slot_bytes(self, rank: int, paths) -> int:
        total = 0
        for p in paths:
            layer = self._layers[p]
            itemsize = adapter_dtype(weight_dtype(layer.base)).itemsize
            total += rank * (layer.kind.in_features + layer.kind.out_features) * itemsize
        return total

    def _slot_count(self, rank: int, paths) -> int:
        servable = sum(1 for e in self.entries.values() if not e.error)
        if self.max_resident_bytes is None:
            return max(servable, len(self._owner), 1)
        per_slot = max(self._slot_bytes(rank, paths), 1)
        return max(1, self.max_resident_bytes // per_slot)

    @property
    def slots(self) -> int:
        return len(self._owner)

    @property
    def resident_bytes(self) -> int:
        """Bytes of the stacks: every slot, padded to the pool's rank (what is allocated)."""
        return sum(a.nbytes + b.nbytes for a, b in self._stacks.values())

    @torch.no_grad()
    def _resize(self, rank: int, slots: int) -> None:
        if rank == self.rank and slots == len(self._owner) and \
                set(self._stacks) == set(self._layers):
            return
        # a budget fixed in bytes: a larger rank may leave fewer slots; keep the held ones
        held = [i for i, e in enumerate(self._owner) if e is not None]
        if held and slots <= max(held):
            for i in range(slots, len(self._owner)):
                if self._owner[i] is not None and not self._owner[i].pins:
                    self._free(self._owner[i])
            slots = max([slots] + [i + 1 for i, e in enumerate(self._owner) if e is not None])
        stacks = {}
        for path, layer in self._layers.items():
            dtype, device = adapter_dtype(weight_dtype(layer.base)), weight_device(layer.base)
            a = torch.zeros(slots + 1, rank, layer.kind.in_features, dtype=dtype, device=device)
            b = torch.zeros(slots + 1, layer.kind.out_features, rank, dtype=dtype, device=device)
            if path in self._stacks:
                old_a, old_b = self._stacks[path]
                n, r = min(slots, old_a.shape[0] - 1), old_a.shape[1]
                a[:n, :r], b[:n, :, :r] = old_a[:n], old_b[:n]
            stacks[path] = (a, b)
        self._stacks = stacks
        self._owner = (self._owner + [None] * slots)[:slots]
        self.rank = rank

    def _free(self, entry: PoolEntry) -> None:
        slot = entry.slot
        if slot is None:
            return
        entry.slot = None
        self._owner[slot] = None
        self._used.pop(slot, None)
        for a, b in self._stacks.values():
            a[slot].zero_()
            b[slot].zero_()

    def _entry(self, name: str, refresh: bool = True) -> PoolEntry:
        entry = self.entries.get(name)
        if entry is None and refresh:
            self._refresh()     # a file dropped into the folder since the last look
            entry = self.entries.get(name)
        if entry is None:
            raise UnknownAdapterError(f"no adapter named {name!r}; the pool has "
                                      f"{', '.join(self.names[:20]) or 'none'}"
                                      + (" ..." if len(self.entries) > 20 else ""))
        return entry

    def acquire(self, name: str) -> int:
        """The slot of adapter `name`, loaded if need be, pinned until `release(slot)`."""
        with self._lock:
            return self._acquire(name)

    def _acquire(self, name: str) -> int:
        entry = self._entry(name)
        if self._changed(entry):            # hot swap: the file was replaced
            self._retire(entry)
            self.entries[name] = entry = self._read_header(name, entry.source)
            self._ensure_layers()
        if entry.error:
            raise AdapterUnavailableError(entry.error)
        if entry.slot is None:
            self._load(entry, self._free_slot())
        entry.pins += 1
        self._used[entry.slot] = next(self._clock)
        return entry.slot

    def release(self, slot: int) -> None:
        """Unpin a slot `acquire` gave; a replaced adapter's slot is freed with its last pin."""
        with self._lock:
            self._release(slot)

    def _release(self, slot: int) -> None:
        entry = self._owner[slot]
        if entry is None or entry.pins <= 0:
            raise LoraKitError(f"release({slot}): that slot is not held")
        entry.pins -= 1
        if not entry.pins and entry in self._stale:
            self._stale.remove(entry)
            self._free(entry)

    def _free_slot(self) -> int:
        for i, e in enumerate(self._owner):
            if e is None:
                return i
        idle = [i for i, e in enumerate(self._owner) if not e.pins]
        if not idle:
            raise PoolBusy(f"all {len(self._owner)} adapter slots are held by running "
                           "requests")
        victim = min(idle, key=lambda i: self._used.get(i, -1))    # least recently used
        self._free(self._owner[victim])
        return victim

    @torch.no_grad()
    def _load(self, entry: PoolEntry, slot: int) -> None:
        try:
            scale, factors = (self._peft_factors(entry) if entry.kind == "peft"
                              else self._lorakit_factors(entry))
        except (LoraKitError, OSError) as err:
            entry.error = f"adapter {entry.name!r} failed to load: {err}"
            raise AdapterUnavailableError(entry.error) from None
        rank = max([a.shape[0] for a, _ in factors.values()] + [self.rank])
        if rank > self.rank:
            self._resize(rank, len(self._owner))
        for path, (a, b) in factors.items():
            a_stack, b_stack = self._stacks[path]
            r = a.shape[0]
            a_stack[slot, :r] = a.to(a_stack.dtype)
            b_stack[slot, :, :r] = (b * scale).to(b_stack.dtype)
        entry.slot = slot
        entry.loads += 1
        self.loads += 1
        self._owner[slot] = entry

    def _lorakit_factors(self, entry: PoolEntry):
        meta, tensors = read_adapter(entry.source)
        check_fingerprint(self.model, meta["fingerprint"], meta["kinds"],
                          source=f"adapter {entry.source}")
        if saved_keys(meta, tensors):
            raise AdapterFileError(f"{entry.source} trains modules in full (modules_to_save)")
        config = LoRAConfig.from_dict(meta["config"])
        cls = variant_named(config.method)
        factors = {path: cls.file_factors(tensors, path, kind, shape)
                   for path, kind, shape in layer_entries(meta)}
        return cls.scale_for(config), factors

    def _peft_factors(self, entry: PoolEntry):
        pc, stripped = read_peft(entry.source)
        factors = {}
        for path, (kind_name, _) in entry.layers.items():
            a_suffix = next(s for s in _PEFT_FACTORS if f"{path}.{s}" in stripped)
            a, b = stripped[f"{path}.{a_suffix}"], stripped[f"{path}.{_PEFT_FACTORS[a_suffix]}"]
            factors[path] = kind_named(kind_name).from_peft(a, b)
        config = LoRAConfig(rank=int(pc["r"]), alpha=float(pc["lora_alpha"]),
                            rslora=bool(pc.get("use_rslora")))
        return config.scale, factors

    # --- the routed forward -------------------------------------------------------------
    @contextlib.contextmanager
    def routed(self, slots: Sequence[int] | torch.Tensor) -> Iterator[nn.Module]:
        """Row i of the model's batch uses the adapter in `slots[i]` (-1: the bare base)."""
        index = torch.as_tensor(slots, dtype=torch.long).clone()
        if len(index) and int(index.max()) >= len(self._owner):
            raise LoraKitError(f"slot {int(index.max())} is out of range (the pool has "
                               f"{len(self._owner)})")
        index[index < 0] = len(self._owner)
        labels = [e.name if e else "" for e in self._owner]
        batches = []
        for path, layer in self._layers.items():
            if layer.merged:
                raise LoraKitError(f"module {path!r} has a merged adapter; unmerge it "
                                   "before serving from the pool")
            batches.append((layer, RoutedBatch(labels, index.to(weight_device(layer.base)),
                                               self._stacks[path])))
        with handed(batches):
            yield self.model

    def close(self) -> nn.Module:
        """Drop the stacks and give the model back without the pool's layers."""
        for path in self._layers:
            unwrap(self.model, path)
        self._layers, self._stacks, self._owner = {}, {}, []
        for entry in self.entries.values():
            entry.slot, entry.pins = None, 0
        return self.model

    def __repr__(self) -> str:
        resident = sum(1 for e in self.entries.values() if e.slot is not None)
        refused = sum(1 for e in self.entries.values() if e.error)
        return (f"AdapterPool({len(self.entries)} adapters, {resident} resident in "
                f"{self.slots} slots of rank {self.rank}, {refused} refused, "
                f"{self.resident_bytes / 2**20:.1f} MiB resident)")
