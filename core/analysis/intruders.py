r"""Intruder dimensions (Shuttleworth, Andreas, Torralba & Sharma 2024, "LoRA vs Full
Fine-tuning: An Illusion of Equivalence"): new high-ranking singular directions that a
fine-tuned weight has and its base does not.

    W₀ = U₀ Σ₀ V₀ᵀ         base weight (out × in)
    W  = U Σ Vᵀ            fine-tuned weight, W₀ + ΔW
    yⱼ, j ≤ k              W's top-k left singular vectors (columns of U)
    yⱼ is an intruder  ⇔  maxᵢ |cos(yⱼ, xᵢ)| < ε  over every left singular vector xᵢ of W₀

This is the authors' own count, checked against their code (github.com/reeceshuttle/
intruder-dimensions, `find_intruder_dimensions.py`, `find_number_of_intruder_dimensions`):
the left singular vectors (U) of the tuned and the base matrix (`torch.linalg.svd`,
full_matrices=False), |Uᵀ U₀| (a singular vector's sign is arbitrary), the max over every
base vector, and a count over the tuned matrix's first k = 10 (`K`) of those below ε;
their script's default ε is 0.5 (`--intruder_dimension_threshold`, our `THRESHOLD`): a
new direction shares at most half its length with any base direction. The paper's own
text (its definition section) could not be read here, only the abstract; it finds LoRA
updates full of intruders where full fine-tuning has almost none. Beside the count,
each matrix gets the effective rank of ΔW (Roy & Vetterli 2007: exp of the entropy of the
normalised singular values) and ΔW's spectral norm.

`intruder_dimensions` works on two matrices; `analyze_adapter` on an adapter file and
its base weights as a safetensors file (ΔW from the file through the variant protocol,
as `adapter merge` computes it); `compare_weights` on two full state dicts (full
fine-tuning against its base, no adapter); `plot_analysis` draws the bar chart.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from ..config import LoRAConfig
from ..errors import AdapterFileError, AdapterMismatchError, LoraKitError
from ..io.adapter_file import layer_entries, read_adapter
from ..variants import variant_named

K = 10            # the top singular vectors that are checked (the paper's k)
THRESHOLD = 0.5   # ε: below this max |cos| with every base singular vector, an intruder


def max_similarity(base_weight: torch.Tensor, tuned_weight: torch.Tensor,
                   k: int = K) -> torch.Tensor:
    """For each of the tuned matrix's top-k left singular vectors, its largest |cos| with
    any left singular vector of the base (k values, in the order of the singular values)."""
    if base_weight.shape != tuned_weight.shape or base_weight.dim() != 2:
        raise LoraKitError(f"intruder dimensions compare two matrices of one shape; got "
                           f"{tuple(base_weight.shape)} and {tuple(tuned_weight.shape)}")
    u0 = torch.linalg.svd(base_weight.double(), full_matrices=False)[0]
    u = torch.linalg.svd(tuned_weight.double(), full_matrices=False)[0][:, :k]
    # columns are unit vectors, so the dot products are the cosines
    return (u.T @ u0).abs().amax(dim=1)


def intruder_dimensions(base_weight: torch.Tensor, tuned_weight: torch.Tensor,
                        k: int = K, threshold: float = THRESHOLD) -> int:
    """How many of the tuned matrix's top-k singular vectors are intruders: their max |cos|
    with every singular vector of the base is below `threshold`."""
    return int((max_similarity(base_weight, tuned_weight, k) < threshold).sum())


def effective_rank(matrix: torch.Tensor) -> float:
    """exp(H(p)), p = σ / Σσ (Roy & Vetterli 2007); 0 for the zero matrix."""
    s = torch.linalg.svdvals(matrix.double())
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def matrix_report(base_weight: torch.Tensor, tuned_weight: torch.Tensor, k: int = K,
                  threshold: float = THRESHOLD) -> dict:
    """Intruders, their similarities, and ΔW's effective rank and spectral norm."""
    sims = max_similarity(base_weight, tuned_weight, k)
    delta = tuned_weight.double() - base_weight.double()
    return {"intruders": int((sims < threshold).sum()),
            "max_similarity": [round(float(v), 6) for v in sims],
            "effective_rank": round(effective_rank(delta), 6),
            "spectral_norm": float(torch.linalg.matrix_norm(delta, ord=2))}


def _summary(rows: list[dict], k: int, threshold: float, **head) -> dict:
    return {**head, "k": k, "threshold": threshold,
            "total_intruders": sum(r["intruders"] for r in rows), "modules": rows}


def read_weights(path, names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors `names` that a safetensors file holds (the others are left out)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            held = set(f.keys())
            return {n: f.get_tensor(n) for n in names if n in held}
    except Exception as err:   # safetensors raises its own error types and OSError
        raise AdapterFileError(f"base weights {path} are not a readable safetensors file "
                               f"({err})") from None


def analyze_adapter(adapter, base, prefix: str = "", k: int = K,
                    threshold: float = THRESHOLD) -> dict:
    """Per adapted matrix of an adapter file, against base weights stored as safetensors:
    intruder dimensions of W₀ + ΔW, and ΔW's effective rank and spectral norm.

    A base that lacks an adapted weight, or holds it in another shape, is another model:
    `AdapterMismatchError`, naming the weight."""
    meta, tensors = read_adapter(adapter)
    config = LoRAConfig.from_dict(meta["config"])
    method = variant_named(config.method)
    scale = method.scale_for(config)
    entries = list(layer_entries(meta))
    weights = read_weights(base, [f"{prefix}{path}.weight" for path, _, _ in entries])
    rows = []
    for path, kind, shape in entries:
        name = f"{prefix}{path}.weight"
        if name not in weights:
            raise AdapterMismatchError(
                f"{base} has no weight {name!r} that adapter {adapter} adapts; the adapter was "
                "made for another base model, or its module paths need --prefix")
        w = weights[name]
        if list(w.shape) != list(shape):
            raise AdapterMismatchError(
                f"{base}: {name!r} has shape {list(w.shape)}, the adapter {adapter} was made "
                f"for {list(shape)}: it belongs to another base model")
        w = w.float()
        delta = method.file_delta(tensors, path, kind, shape, scale, weight=w)
        rows.append({"module": path, "kind": kind.name, "shape": list(shape),
                     **matrix_report(kind.to_matrix(w), kind.to_matrix(w + delta), k,
                                     threshold)})
    return _summary(rows, k, threshold, adapter=str(adapter), base=str(base),
                    method=config.method)


def compare_weights(base_state: dict[str, torch.Tensor], tuned_state: dict[str, torch.Tensor],
                    k: int = K, threshold: float = THRESHOLD, min_dim: int = 2) -> dict:
    """The same report for two full weight sets (full fine-tuning against its base): every
    floating tensor of two or more axes both hold in one shape, as an (out × in) matrix
    (a convolution's axes after the first flattened); matrices with a side < `min_dim`
    are left out."""
    rows = []
    for name, w0 in base_state.items():
        w = tuned_state.get(name)
        if (w is None or w0.dim() < 2 or not w0.is_floating_point()
                or w.shape != w0.shape):
            continue
        base_m, tuned_m = w0.float().flatten(1), w.float().flatten(1)
        if min(base_m.shape) < min_dim:
            continue
        rows.append({"module": name, "shape": list(w0.shape),
                     **matrix_report(base_m, tuned_m, k, threshold)})
    if not rows:
        raise LoraKitError("the two weight sets share no matrix of one shape to compare")
    return _summary(rows, k, threshold)


def plot_analysis(report: dict, png) -> Path:
    """A bar chart: intruder dimensions per matrix, ΔW's spectral norm beside them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["modules"]
    labels = [r["module"] for r in rows]
    height = max(3.0, 0.28 * len(rows) + 1.5)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, height), sharey=True)
    y = range(len(rows))
    ax.barh(y, [r["intruders"] for r in rows], color="tab:red")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"intruder dimensions in the top {report['k']} (ε = {report['threshold']:g})")
    ax.set_xlim(0, max(1, report["k"]))
    bx.barh(y, [r["spectral_norm"] for r in rows], color="tab:blue")
    bx.set_xlabel("spectral norm of ΔW")
    fig.suptitle(f"{report.get('adapter', 'fine-tuned weights')}: "
                 f"{report['total_intruders']} intruder dimensions in {len(rows)} matrices",
                 fontsize=9)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png

