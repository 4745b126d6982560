"""A fixed random subset of a split: how the text suites cut their data to a budget (the
same examples for every row of a suite, and for every suite that uses the same seed)."""
from __future__ import annotations

import torch


def subset(examples: list, n: int | None, seed: int) -> list:
    """A fixed random subset of n examples (all when n is None or larger)."""
    if n is None or n >= len(examples):
        return list(examples)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))
    return [examples[i] for i in order[:n].tolist()]
