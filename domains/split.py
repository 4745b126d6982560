"""Stratified train/val/test split with a fixed seed.

Each class is shuffled by its own generator (seeded by `seed` and the class), then cut
val | test | train, so the same files and seed always give the same split, and adding
records of one class does not reshuffle the other.
"""
from __future__ import annotations

import numpy as np

from lorakit.errors import DataError

SPLITS = ("train", "val", "test")


def stratified_split(labels: list[int], val: float = 0.1, test: float = 0.2,
                     seed: int = 0) -> dict[str, list[int]]:
    """Indices per split, each class split in the same proportions."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DataError(f"val ({val}) and test ({test}) fractions must be in [0, 1) and "
                        "sum to less than 1")
    labels_arr = np.asarray(labels)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for cls in sorted(set(labels_arr.tolist())):
        idx = np.flatnonzero(labels_arr == cls)
        rng = np.random.default_rng([seed, int(cls)])
        idx = idx[rng.permutation(len(idx))]
        n_val, n_test = round(val * len(idx)), round(test * len(idx))
        out["val"] += idx[:n_val].tolist()
        out["test"] += idx[n_val:n_val + n_test].tolist()
        out["train"] += idx[n_val + n_test:].tolist()
    return {s: sorted(v) for s, v in out.items()}
