"""Fragments of transcripts cut at random positions: the robustness test of coding-potential
tools (partial transcripts from assemblies and short reads).

Every fragment has exactly `length` nucleotides. A transcript shorter than `length` is
skipped, not kept whole: a whole short transcript beside cut long ones would make length
a label again (lncRNAs are the short ones), which is what the fragments are meant to take
away. The start is uniform over the positions where the fragment fits, drawn from one
seeded generator in the order of the input, so the same sequences and seed give the same
fragments on every machine.
"""
from __future__ import annotations

import numpy as np


def random_fragments(seqs: list[str], length: int, seed: int = 0
                     ) -> tuple[list[int], list[str]]:
    """(indices of the transcripts long enough, their fragments of `length` nt)."""
    if length < 1:
        raise ValueError(f"fragment length must be >= 1, got {length}")
    rng = np.random.default_rng(seed)
    kept, fragments = [], []
    for i, seq in enumerate(seqs):
        if len(seq) < length:
            continue
        start = int(rng.integers(0, len(seq) - length + 1))
        kept.append(i)
        fragments.append(seq[start:start + length])
    return kept, fragments
