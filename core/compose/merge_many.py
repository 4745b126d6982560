r"""Merging several adapters into one adapter: LoRA-LEGO, exact concatenation, PEFT's merges.

Every LoRA update is a sum of rank-1 units, one per rank: the column b_j of B with
the row a_j of A,

    ΔW = s · B A = Σ_j (s · b_j) a_jᵀ          (out × in)

and two properties follow (Zhao et al., "Merging LoRAs like Playing LEGO: Pushing the
Modularity of LoRA to Extremes Through Rank-Wise Clustering", arXiv 2409.16167, ICLR
2025, where the units are called minimal semantic units):

- permutation invariance: reordering the ranks of A and B together leaves ΔW unchanged;
- concatenation-summation equivalence: stacking LoRAs along the rank,
  A = [A_1; A_2], B = [s_1 B_1, s_2 B_2] (scale 1), gives ΔW_1 + ΔW_2 exactly.

So `concat` is the exact, uncompressed merge: rank = the sum of the inputs' ranks, the
update = the (weighted) sum of theirs. LoRA-LEGO (`lego`) compresses that pool of units
per module to k units: each unit becomes the vector [â; b̂]/√2 (A's row and B's scaled
column, each normalised to length 1, signs chosen so b̂'s largest entry is positive),
scikit-learn's KMeans groups the pool into k clusters (k-means++, `n_init` restarts,
fixed `seed`), and each centroid, split back into its a and b halves, is one rank of the
merged LoRA. The paper's dual reweighting then sets its scale:

1. parameter reweighting: a centroid of unit vectors is shorter than its members ("norm
   decay"), so each centroid rank is rescaled to the mean size ‖b‖·‖a‖ of its cluster's
   units (√ of it on each of a and b);
2. output reweighting: k such ranks, each as large as a typical input rank, give an
   output larger than any one input LoRA's ("variance expansion"), so the module's k
   ranks are scaled together to a target norm: the mean of the inputs' ‖wᵢΔWᵢ‖_F
   (`output_norm="mean"`, the default: the merged update as large as one input's), or
   ‖Σ wᵢΔWᵢ‖_F (`"sum"`: as large as the summed update, concatenation's), or not at all
   (`"none"`).

What was read: the paper's abstract and public summaries of its method (arxiv.org/abs/
2409.16167, sciencestack.ai/paper/2409.16167, themoonlight.io's review): clusters of
units, centroids as the merged ranks, a parameter then an output rescaling against
"norm decay" and "variance expansion". The authors' code and equations were not
available to check, so the exact targets above are this module's reading. With k ≥ the
number of units no clustering happens and parameter reweighting is the identity: the
merged LoRA is `concat` (zero-padded to rank k), exactly with `"sum"` or `"none"`, scaled
down to the mean input norm with `"mean"`.

The `peft-*` methods are PEFT's own `add_weighted_adapter` (`linear`, `cat`, `svd`,
`ties`, `ties_svd`, `dare_linear`, `dare_ties`, `dare_linear_svd`, `dare_ties_svd`,
`magnitude_prune`, `magnitude_prune_svd`), computed by PEFT itself: the inputs go out
through `export_peft`, PEFT merges them on a stand-in model built from the files' base
fingerprint (one module of the recorded kind and shape per adapted path: PEFT's merges
read only the adapters, never the base weights), and the result comes back through
`import_peft`. So no base model is needed for any method.

Inputs are adapter files, `Adapters` handles (each of their named adapters) or
`(meta, tensors)` pairs as `read_adapter` returns them; any method whose update is a
plain product B A (`Variant.routable`: lora, rsLoRA, s2lora, ffa_lora, lora_sb,
lora_ga, allora, ggpo, balora) merges, at any mix of ranks and targets. DoRA's update
depends on the base weight's row norms, so it has no rank-1 units and is refused. The
result is a `MergedAdapter`: the `(meta, tensors)` of a plain-LoRA adapter file (scale
1, each module's ranks zero-padded to the common rank), which `.save(path)` writes as
the file `lorakit.load_adapter` loads, and `.load(model)` attaches directly.
"""
from __future__ import annotations

import json
import math
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..adapters import Adapters, attach, check_fingerprint
from ..atomic import atomic_write
from ..config import LoRAConfig
from ..errors import AdapterMismatchError, LoraKitError
from ..io.adapter_file import (
    FORMAT,
    fingerprint_hash,
    layer_entries,
    payload,
    read_adapter,
    saved_keys,
)
from ..io.peft import import_peft, write_peft
from ..layers.kinds import KINDS
from ..variants import variant_named
from ..version import __version__

PEFT_METHODS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties",
                "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
# PEFT combines A's and B's of these one by one, so it needs one rank for all inputs
PEFT_SAME_RANK = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
PEFT_DENSITY = ("ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
                "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
METHODS = ("lego", "concat", *(f"peft-{m}" for m in PEFT_METHODS))
OUTPUT_NORMS = ("sum", "mean", "none")


@dataclass
class Source:
    """One input adapter: its file's (meta, tensors) and how messages name it."""
    label: str
    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def config(self) -> LoRAConfig:
        return LoRAConfig.from_dict(self.meta["config"])

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Module path → (A, s·B) in float32: ΔW = (s·B) A as an (out × in) matrix."""
        config = self.config
        method = variant_named(config.method)
        scale = method.scale_for(config)
        out = {}
        for path, kind, shape in layer_entries(self.meta):
            a, b = method.file_factors(self.tensors, path, kind, shape)
            out[path] = (a.float(), b.float() * scale)
        return out


@dataclass
class MergedAdapter:
    """A merged adapter: exactly the `(meta, tensors)` its adapter file holds."""
    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def rank(self) -> int:
        return int(self.meta["config"]["rank"])

    def save(self, path) -> Path:
        """Write the adapter file (`lorakit.load_adapter` loads it)."""
        return atomic_write(Path(path), lambda tmp: save_file(
            self.tensors, tmp, metadata={"lorakit": json.dumps(self.meta)}))

    def load(self, model: nn.Module, name: str = "merged"):
        """Attach it to `model` as adapter `name` (active if it is the model's first, as
        `attach`); refuses a model of another base, naming the first module that differs."""
        check_fingerprint(model, self.meta["fingerprint"], self.meta["kinds"],
                          source=f"merged adapter {name!r}")
        adapters = attach(model, LoRAConfig.from_dict(self.meta["config"]), name)
        try:
            adapters.load_state_dict(self.tensors, source=f"merged adapter {name!r}", name=name)
        except Exception:
            adapters.delete(name)
            raise
        return adapters

    def delta(self, path: str) -> torch.Tensor:
        """ΔW (out × in) of one module."""
        return self.tensors[f"{path}.lora_B"] @ self.tensors[f"{path}.lora_A"]


# --- reading and checking the inputs --------------------------------------------------
def _sources(items) -> list[Source]:
    if isinstance(items, (str, Path, Adapters, MergedAdapter)):
        items = [items]
    out: list[Source] = []
    for item in items:
        if isinstance(item, (str, Path)):
            meta, tensors = read_adapter(item)
            out.append(Source(str(item), meta, tensors))
        elif isinstance(item, Adapters):
            for name in item.names:
                meta, tensors = payload(item, name)
                out.append(Source(f"adapter {name!r}", meta, tensors))
        elif isinstance(item, MergedAdapter):
            out.append(Source("a merged adapter", item.meta, item.tensors))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], dict):
            out.append(Source(f"adapter {item[0].get('name', len(out))!r}", *item))
        else:
            raise LoraKitError(f"merge_adapters: cannot read {type(item).__name__} as an "
                               "adapter; pass adapter files, Adapters handles or the "
                               "(meta, tensors) pairs read_adapter returns")
    return out


def _check(sources: list[Source], drop_saved: bool) -> tuple[dict, dict]:
    """The union fingerprint and kinds of the adapted modules, or a refusal by name."""
    if not sources:
        raise LoraKitError("merge_adapters needs at least one adapter; it was given none")
    fingerprint: dict[str, list[int]] = {}
    kinds: dict[str, str] = {}
    owner: dict[str, str] = {}
    for src in sources:
        method = variant_named(src.config.method, source=src.label)
        if not method.routable:
            raise LoraKitError(f"{src.label}: method {method.method!r} is not a plain "
                               f"product B·A: {method.merge_refusal}")
        saved = saved_keys(src.meta, src.tensors)
        if saved and not drop_saved:
            raise LoraKitError(
                f"{src.label} trains {sorted({k.rsplit('.', 1)[0] for k in saved})} in full "
                "(modules_to_save), which cannot be merged with other adapters' copies. Pass "
                "drop_saved=True (--drop-saved) to merge the low-rank updates only, and keep "
                "each task's saved module (a classifier head) yourself")
        for path, kind, shape in layer_entries(src.meta):
            if path in fingerprint and (fingerprint[path] != list(shape)
                                        or kinds[path] != kind.name):
                raise AdapterMismatchError(
                    f"{src.label} and {owner[path]} were made for different base models: "
                    f"module {path!r} is {kind.describe_shape(shape)} in the first but "
                    f"{KINDS[kinds[path]].describe_shape(fingerprint[path])} in the second. "
                    "Merge only adapters of one base")
            fingerprint.setdefault(path, list(shape))
            kinds.setdefault(path, kind.name)
            owner.setdefault(path, src.label)
    return fingerprint, kinds


def _weights(weights, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise LoraKitError(f"merge_adapters: {len(weights)} weights for {n} adapters; give "
                           "one weight per adapter")
    return weights


# --- the merged file ------------------------------------------------------------------
def _pad(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero ranks appended up to `rank`: the update is unchanged (concatenation-summation)."""
    extra = rank - a.shape[0]
    return (torch.cat([a, a.new_zeros(extra, a.shape[1])]),
            torch.cat([b, b.new_zeros(b.shape[0], extra)], dim=1))


def _assemble(sources: list[Source], factors: dict[str, tuple], fingerprint: dict,
              kinds: dict, info: dict) -> MergedAdapter:
    rank = max([a.shape[0] for a, _ in factors.values()] + [1])
    tensors = {}
    for path, (a, b) in factors.items():
        a, b = _pad(a, b, rank)
        tensors[f"{path}.lora_A"] = a.contiguous()
        tensors[f"{path}.lora_B"] = b.contiguous()
    targets = list(dict.fromkeys(t for s in sources for t in s.config.targets))
    config = LoRAConfig(rank=rank, alpha=float(rank), targets=targets)   # scale 1: s is in B
    meta = {"format": FORMAT, "version": __version__, "name": "merged",
            "config": config.to_dict(), "fingerprint": fingerprint,
            "fingerprint_sha256": fingerprint_hash(fingerprint), "kinds": kinds,
            "extra": {"merge": info}}
    return MergedAdapter(meta, tensors)


def _pools(sources: list[Source], weights: list[float]):
    """Module path → [(A_i, w_i s_i B_i)] over the inputs that adapt it, in input order."""
    pools: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for src, w in zip(sources, weights):
        for path, (a, b) in src.factors().items():
            pools.setdefault(path, []).append((a, b * w))
    return pools


def concat_factors(pool: Sequence[tuple[torch.Tensor, torch.Tensor]]):
    """[A_1; A_2; ...] and [B_1, B_2, ...]: ΔW = Σ B_i A_i exactly."""
    return torch.cat([a for a, _ in pool]), torch.cat([b for _, b in pool], dim=1)


def lowrank_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖B A‖_F without forming B A: sqrt(Σ (BᵀB) ⊙ (A Aᵀ)), r × r work."""
    return float(((b.T @ b) * (a @ a.T)).sum().clamp_min(0.0).sqrt())


# --- LoRA-LEGO ------------------------------------------------------------------------
def lego_factors(pool: Sequence[tuple[torch.Tensor, torch.Tensor]], k: int, seed: int = 0,
                 n_init: int = 10, output_norm: str = "mean"):
    """Merge one module's LoRAs [(A_i, B_i)] (scales folded into B) into rank ≤ k.

    Returns (A (k' × in), B (out × k'), labels) with k' = min(k, units); `labels[j]` is
    the cluster of the j-th unit of the concatenated pool (-1: a zero unit, dropped).
    """
    a, b = concat_factors(pool)
    size = a.norm(dim=1) * b.norm(dim=0)                  # ‖b_j a_jᵀ‖_F of each unit
    live = torch.nonzero(size > 0).flatten()
    labels = torch.full((a.shape[0],), -1, dtype=torch.long)
    if len(live) <= k:        # every unit its own cluster: concat, reweighting is identity
        labels[live] = torch.arange(len(live))
        ca, cb = a[live], b[:, live]
    else:
        ca, cb, labels[live] = _clustered(a[live], b[:, live], size[live], k, seed, n_init)
    # 2. output reweighting: the module's update keeps the inputs' norm
    if output_norm != "none":
        if output_norm == "sum":
            target = lowrank_norm(a, b)
        else:
            target = sum(lowrank_norm(pa, pb) for pa, pb in pool) / len(pool)
        have = lowrank_norm(ca, cb)
        if have > 0:
            cb = cb * (target / have)
    return ca, cb, labels


def _clustered(a, b, size, k: int, seed: int, n_init: int):
    """KMeans over the normalised units, then parameter reweighting of the centroids."""
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        raise LoraKitError("LoRA-LEGO clusters with scikit-learn, which is not installed: "
                           "pip install 'lorakit[merge]' (or scikit-learn)") from None
    a_hat = a / a.norm(dim=1, keepdim=True)
    b_hat = b / b.norm(dim=0, keepdim=True)
    # (a, b) and (-a, -b) are the same unit: make b̂'s largest entry positive
    top = b_hat.abs().argmax(dim=0)
    sign = torch.sign(b_hat[top, torch.arange(b_hat.shape[1])])
    a_hat, b_hat = a_hat * sign[:, None], b_hat * sign[None, :]
    x = torch.cat([a_hat, b_hat.T], dim=1).double() / math.sqrt(2.0)
    # a canonical order (largest unit first), so the result ignores how the inputs were
    # ordered: permutation invariance carried over to the merge
    order = torch.argsort(-size.double(), stable=True)
    with warnings.catch_warnings():   # fewer distinct units than k: handled below
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x[order].numpy())
    cluster = torch.empty(len(order), dtype=torch.long)
    cluster[order] = torch.from_numpy(km.labels_).long()
    # KMeans may leave a cluster empty when the pool has fewer distinct units than k
    used = [c for c in range(k) if bool((cluster == c).any())]
    centres = torch.from_numpy(km.cluster_centers_[used]).float()
    cluster = torch.tensor([used.index(c) for c in cluster.tolist()], dtype=torch.long)
    n_in = a.shape[1]
    ca, cb = centres[:, :n_in], centres[:, n_in:].T      # k × in, out × k
    # 1. parameter reweighting: each centroid rank at the mean size of its cluster's units
    root = torch.stack([size[cluster == c].mean() for c in range(len(used))]).sqrt()
    ca = ca / ca.norm(dim=1, keepdim=True).clamp_min(1e-12) * root[:, None]
    cb = cb / cb.norm(dim=0, keepdim=True).clamp_min(1e-12) * root[None, :]
    return ca, cb, cluster


# --- PEFT's merges --------------------------------------------------------------------
def stand_in_model(fingerprint: dict[str, list[int]], kinds: dict[str, str]) -> nn.Module:
    """A module tree with one zero-weight layer of the recorded kind and shape per adapted
    path: enough for PEFT to attach and merge adapters, which never read the base."""
    root = nn.Module()
    for path, kind in kinds.items():
        shape = fingerprint[path]
        with torch.device("meta"):
            if kind == "linear":
                layer = nn.Linear(shape[1], shape[0], bias=False)
            elif kind == "embedding":
                layer = nn.Embedding(shape[0], shape[1])
            elif kind == "conv2d":
                layer = nn.Conv2d(shape[1], shape[0], tuple(shape[2:]), bias=False)
            else:
                from transformers.pytorch_utils import Conv1D
                layer = Conv1D(shape[1], shape[0])
        layer = layer.to_empty(device="cpu")
        for p in layer.parameters():
            nn.init.zeros_(p)
        parent = root
        *parents, last = path.split(".")
        for part in parents:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(last, layer)
    return root


def peft_merge(sources: list[Source], weights: list[float], combination: str,
               fingerprint: dict, kinds: dict, svd_rank: int | None, density: float,
               seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """PEFT's `add_weighted_adapter(combination_type=combination)`, in and out through
    lorakit's PEFT export and import; returns module path → (A, B) with scale 1.

    DARE drops entries at random from torch's global generator: it is seeded with `seed`
    just before the merge (and restored after), so a merge is reproducible."""
    try:
        import peft
    except ImportError:
        raise LoraKitError(f"method 'peft-{combination}' is computed by PEFT, which is not "
                           "installed: pip install peft") from None
    if combination in PEFT_SAME_RANK:
        ranks = {s.label: max(a.shape[0] for a, _ in s.factors().values()) for s in sources}
        if len(set(ranks.values())) > 1:
            raise LoraKitError(
                f"PEFT's {combination!r} merge combines A's and B's one by one, so every "
                f"adapter needs one rank; these have {ranks}. Use concat, lego, peft-cat or "
                "peft-svd for adapters of different ranks")
    with tempfile.TemporaryDirectory(prefix="lorakit-merge-") as tmp:
        names = []
        for i, src in enumerate(sources):
            meta = {**src.meta, "config": {**src.meta["config"], "modules_to_save": []}}
            tensors = {k: v for k, v in src.tensors.items()
                       if k not in saved_keys(src.meta, src.tensors)}
            write_peft(meta, tensors, Path(tmp) / f"in{i}", source=src.label)
            names.append(f"in{i}")
        model = peft.PeftModel.from_pretrained(stand_in_model(fingerprint, kinds),
                                               str(Path(tmp) / "in0"), adapter_name="in0")
        for name in names[1:]:
            model.load_adapter(str(Path(tmp) / name), adapter_name=name)
        options = {"svd_rank": svd_rank} if combination.endswith("svd") else {}
        if combination in PEFT_DENSITY:
            options["density"] = density
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model.add_weighted_adapter(names, weights, "merged",
                                           combination_type=combination, **options)
        except ValueError as err:
            raise LoraKitError(f"PEFT refused the {combination!r} merge: {err}") from None
        model.save_pretrained(str(Path(tmp) / "out"), selected_adapters=["merged"])
        handle = import_peft(Path(tmp) / "out" / "merged", stand_in_model(fingerprint, kinds),
                             name="merged")
        meta, tensors = payload(handle, "merged")
    back = Source("PEFT's merge", meta, tensors)
    return back.factors()


# --- the one entry point --------------------------------------------------------------
def merge_adapters(sources: Iterable, method: str = "lego", *, k: int | None = None,
                   weights: Sequence[float] | None = None, seed: int = 0, n_init: int = 10,
                   output_norm: str = "mean", density: float = 0.5, drop_saved: bool = False,
                   base: nn.Module | None = None, out=None) -> MergedAdapter:
    """Merge several adapters of one base into one plain-LoRA adapter.

    Args:
        sources: adapter files, `Adapters` handles (every named adapter) or
            `(meta, tensors)` pairs; any mix of ranks, targets and plain-product methods.
        method: `lego` (LoRA-LEGO: k-means over the rank-1 units, dual reweighting),
            `concat` (exact: rank = sum of ranks, ΔW = Σ wᵢ ΔWᵢ), or `peft-<type>` for
            PEFT's `add_weighted_adapter` with combination_type <type>.
        k: merged rank for `lego` (default: the largest input rank) and the `svd_rank` of
            PEFT's `*svd` types (default: PEFT's, the largest input rank).
        weights: one factor per adapter on its update (default 1 each: the sum of updates).
        seed: KMeans' random_state for `lego`; the torch seed of DARE's random drops.
        n_init: KMeans restarts (k-means++ init each time; the lowest inertia is kept).
        output_norm: LEGO's output reweighting target per module: `mean` (the mean
            ‖wᵢΔWᵢ‖_F, default), `sum` (‖Σ wᵢΔWᵢ‖_F) or `none`.
        density: fraction kept by PEFT's ties / dare / magnitude_prune types.
        drop_saved: merge adapters with modules_to_save (heads) by leaving those out.
        base: the base model, optional: every input is first checked against it, which
            also catches an adapter of another base that shares no module path with the
            others (without it, inputs are checked against each other only).
        out: also write the merged adapter file there.
    """
    if method not in METHODS:
        raise LoraKitError(f"merge method {method!r} is unknown; choose one of "
                           f"{', '.join(METHODS)}")
    if k is not None and k < 1:
        raise LoraKitError(f"merge_adapters: k (the merged rank) must be >= 1, got {k}")
    if output_norm not in OUTPUT_NORMS:
        raise LoraKitError(f"merge_adapters: output_norm must be one of {OUTPUT_NORMS}, got "
                           f"{output_norm!r}")
    srcs = _sources(sources)
    fingerprint, kinds = _check(srcs, drop_saved)
    if base is not None:
        for src in srcs:
            check_fingerprint(base, src.meta["fingerprint"], src.meta["kinds"], src.label)
    w = _weights(weights, len(srcs))
    info = {"method": method, "sources": [s.label for s in srcs], "weights": w}
    if method == "concat":
        factors = {p: concat_factors(pool) for p, pool in _pools(srcs, w).items()}
    elif method == "lego":
        k = k or max(s.config.rank for s in srcs)
        factors = {p: lego_factors(pool, k, seed, n_init, output_norm)[:2]
                   for p, pool in _pools(srcs, w).items()}
        info.update(k=k, seed=seed, n_init=n_init, output_norm=output_norm)
    else:
        combination = method.removeprefix("peft-")
        factors = peft_merge(srcs, w, combination, fingerprint, kinds, k, density, seed)
        info.update(svd_rank=k, density=density, seed=seed)
    merged = _assemble(srcs, factors, fingerprint, kinds, info)
    if out is not None:
        merged.save(out)
    return merged


__all__ = ["METHODS", "PEFT_METHODS", "MergedAdapter", "concat_factors", "lego_factors",
           "lowrank_norm", "merge_adapters", "stand_in_model"]
