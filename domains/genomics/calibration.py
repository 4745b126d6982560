"""How far a coding probability can be taken at its word: Brier score, reliability curve,
the threshold that a test set would pick, and temperature scaling.

Temperature scaling (Guo et al. 2017, sec. 4.2) divides the log-odds of every
probability by one T > 0 fitted on validation data by log loss. It leaves the ranking
(AUROC) and the side of 0.5 each transcript falls on (accuracy, MCC at 0.5) untouched
and only makes the probabilities say how often they are right; it cannot move a decision
threshold. `best_threshold` shows whether a threshold would need moving: it is the cut
that maximises MCC on the set it is given, a diagnostic that must never choose settings
on a test set; the same search on validation data is a fair way to move a threshold.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

EPS = 1e-12  # probabilities are clipped to [EPS, 1 - EPS] before a log


def brier(labels, probs) -> float:
    """Mean squared difference between the coding probability and the label (0 best)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    return float(np.mean((p - y) ** 2))


def log_loss(labels, probs) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def reliability(labels, probs, bins: int = 10) -> dict[str, np.ndarray]:
    """Per equal-width probability bin: mean predicted probability, observed share of
    coding transcripts, count (empty bins left out); `ece` is the count-weighted mean gap."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    filled = count > 0
    mean_p = np.bincount(which, weights=p, minlength=bins)[filled] / count[filled]
    observed = np.bincount(which, weights=y, minlength=bins)[filled] / count[filled]
    ece = float(np.sum(count[filled] * np.abs(mean_p - observed)) / max(len(p), 1))
    return {"predicted": mean_p, "observed": observed, "count": count[filled], "ece": ece}


def best_threshold(labels, probs) -> tuple[float, float]:
    """(threshold, MCC) of the cut `prob >= threshold` with the highest MCC on this set."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(p_sorted)), len(p) - 1]  # each distinct cut
    tp = np.cumsum(y_sorted)[last].astype(np.float64)
    fp = np.cumsum(~y_sorted)[last].astype(np.float64)
    pos, neg = float(y.sum()), float((~y).sum())
    fn, tn = pos - tp, neg - fp
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    mcc = np.divide(tp * tn - fp * fn, denom, out=np.zeros_like(tp), where=denom > 0)
    k = int(np.argmax(mcc))
    return float(p_sorted[last[k]]), float(mcc[k])


def _logit(probs) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """Coding probabilities with their log-odds divided by `temperature`."""
    return 1.0 / (1.0 + np.exp(-_logit(probs) / temperature))


def fit_temperature(labels, probs) -> float:
    """The T > 0 that minimises log loss of `apply_temperature(probs, T)` on (labels,
    probs), searched over log T in [-4, 4] (T from 0.018 to 55)."""
    from scipy.optimize import minimize_scalar
    y = np.asarray(labels, dtype=np.float64)
    if len(y) == 0 or y.min() == y.max():
        raise ValueError("fit_temperature needs labels of both classes")
    z = _logit(probs)

    def loss(log_t: float) -> float:
        s = z / np.exp(log_t)
        # log(1 + e^-s) for y = 1 and log(1 + e^s) for y = 0, computed stably
        return float(np.mean(np.logaddexp(0.0, np.where(y > 0, -s, s))))

    return float(np.exp(minimize_scalar(loss, bounds=(-4.0, 4.0), method="bounded",
                                        options={"xatol": 1e-5}).x))


def plot_reliability(curves: dict[str, tuple[list[int], list[float]]], path,
                     title: str = "", bins: int = 10) -> Path:
    """One panel per method (name -> (labels, probs)): observed share of coding transcripts
    against the mean predicted probability per bin, marker area ~ bin count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import save_png
    n = len(curves)
    cols = n if n <= 5 else 4
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), dpi=110,
                             squeeze=False)
    for ax, (name, (labels, probs)) in zip(axes.flat, curves.items()):
        r = reliability(labels, probs, bins)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.plot(r["predicted"], r["observed"], color="C0", linewidth=1)
        ax.scatter(r["predicted"], r["observed"], s=8 + 200 * r["count"] / len(labels),
                   color="C0", alpha=0.7)
        ax.set_title(f"{name}\nBrier {brier(labels, probs):.3f}, ECE {r['ece']:.3f}",
                     fontsize=8)
        ax.set(xlim=(0, 1), ylim=(0, 1))
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.supxlabel("predicted coding probability", fontsize=8)
    fig.supylabel("observed share of mRNAs", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_png(fig, path)
