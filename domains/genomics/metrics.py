"""Binary classification metrics of coding-potential tools, and the ROC plot.

Coding (mRNA) is the positive class, as in CPC2 and CPAT: sensitivity is the share of
mRNAs called coding, specificity the share of lncRNAs called non-coding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

METRICS = ["accuracy", "sensitivity", "specificity", "precision", "f1", "mcc", "auroc"]


def auroc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    # each run of equal scores gets the mean of its 1-based positions in sorted order
    _, first, size = np.unique(s[order], return_index=True, return_counts=True)
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(first + (size + 1) / 2, size)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(labels, probs, threshold: float = 0.5) -> dict[str, float]:
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    pred = p >= threshold
    tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
    fp, fn = int((pred & ~y).sum()), int((~pred & y).sum())

    def div(a, b):
        return a / b if b else 0.0

    sens, spec, prec = div(tp, tp + fn), div(tn, tn + fp), div(tp, tp + fp)
    denom = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    return {"accuracy": div(tp + tn, len(y)), "sensitivity": sens, "specificity": spec,
            "precision": prec, "f1": div(2 * prec * sens, prec + sens),
            "mcc": div(tp * tn - fp * fn, denom), "auroc": auroc(y, p)}


def paired_bootstrap(labels, probs_a, probs_b, metric: str, n: int = 2000, seed: int = 0,
                     threshold: float = 0.5) -> dict[str, float]:
    """`metric` of model a minus model b on the same transcripts, with a 95% percentile
    interval from `n` paired bootstrap resamples of the transcripts (both models scored on
    each resample), so a gap can be told from the noise of one test set."""
    y = np.asarray(labels)
    a, b = np.asarray(probs_a, dtype=np.float64), np.asarray(probs_b, dtype=np.float64)
    if not len(y) == len(a) == len(b):
        raise ValueError(f"paired_bootstrap: {len(y)} labels, {len(a)} and {len(b)} scores")
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        diffs.append(binary_metrics(y[i], a[i], threshold)[metric]
                     - binary_metrics(y[i], b[i], threshold)[metric])
    lo, hi = np.nanpercentile(diffs, [2.5, 97.5])
    return {"diff": binary_metrics(y, a, threshold)[metric]
            - binary_metrics(y, b, threshold)[metric], "lo": float(lo), "hi": float(hi)}


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = np.cumsum(~y)[distinct]
    tpr = np.r_[0.0, tps / max(y.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~y).sum(), 1)]
    return fpr, tpr


def plot_roc(curves: dict[str, tuple[list[int], list[float]]], path, title: str = "") -> Path:
    """One ROC curve per method (name -> (labels, scores)) in one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    for name, (labels, scores) in curves.items():
        fpr, tpr = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auroc(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate (lncRNA called coding)",
           ylabel="true positive rate (mRNA called coding)", title=title or "ROC",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=7)
    return save_png(fig, path)


def save_png(fig, path) -> Path:
    """Lay out, write and close a matplotlib figure (its folder made as needed)."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |\n"
                          for r in rows)
