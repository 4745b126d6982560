"""Coding-potential features of the CPC2 / CPAT family (Kang et al. 2017; Wang et al. 2013).

- longest ORF: the longest ATG ... stop stretch in the three forward frames, its
  length and its coverage of the transcript;
- Fickett TESTCODE score (Fickett 1982): base composition and the periodicity of each
  base over codon positions, scored with Fickett's published lookup tables;
- hexamer score (CPAT, Wang et al. 2013 sec. 2.2): mean log-ratio of in-frame hexamer
  frequencies in coding vs non-coding sequence, with the frequencies learnt from a
  training split only (`HexamerTable.fit`).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

STOPS = ("TAA", "TAG", "TGA")
_ORF = re.compile(r"ATG(?:(?!TAA|TAG|TGA)...)*(?:TAA|TAG|TGA)")


@dataclass(frozen=True)
class ORF:
    start: int   # 0-based, first base of ATG
    end: int     # exclusive, after the stop codon
    frame: int

    @property
    def length(self) -> int:
        return self.end - self.start


def longest_orf(seq: str, min_codons: int = 0) -> ORF | None:
    """Longest complete ORF (ATG to an in-frame stop, stop included) on the forward strand."""
    best: ORF | None = None
    for frame in range(3):
        codons = [seq[i:i + 3] for i in range(frame, len(seq) - 2, 3)]
        start = None
        for j, codon in enumerate(codons):
            if start is None and codon == "ATG":
                start = j
            elif start is not None and codon in STOPS:
                length = (j + 1 - start) * 3
                if best is None or length > best.length:
                    best = ORF(frame + 3 * start, frame + 3 * (j + 1), frame)
                start = None
    if best is not None and best.length < 3 * min_codons:
        return None
    return best


# Fickett (1982), Table 2: probabilities of coding by parameter value, and weights
POSITION_PROB = {"A": [0.94, 0.68, 0.84, 0.93, 0.58, 0.68, 0.45, 0.34, 0.20, 0.22],
                 "C": [0.80, 0.70, 0.70, 0.81, 0.66, 0.48, 0.51, 0.33, 0.30, 0.23],
                 "G": [0.90, 0.88, 0.74, 0.64, 0.53, 0.48, 0.27, 0.16, 0.08, 0.08],
                 "T": [0.97, 0.97, 0.91, 0.68, 0.69, 0.44, 0.54, 0.20, 0.09, 0.09]}
POSITION_WEIGHT = {"A": 0.26, "C": 0.18, "G": 0.31, "T": 0.33}
POSITION_BOUNDS = [1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3, 1.2, 1.1, 0.0]
CONTENT_PROB = {"A": [0.28, 0.49, 0.44, 0.55, 0.62, 0.49, 0.67, 0.65, 0.81, 0.21],
                "C": [0.82, 0.64, 0.51, 0.64, 0.59, 0.59, 0.43, 0.44, 0.39, 0.31],
                "G": [0.40, 0.54, 0.47, 0.64, 0.64, 0.73, 0.41, 0.41, 0.33, 0.29],
                "T": [0.28, 0.24, 0.39, 0.40, 0.55, 0.75, 0.56, 0.69, 0.51, 0.58]}
CONTENT_WEIGHT = {"A": 0.11, "C": 0.12, "G": 0.15, "T": 0.14}
CONTENT_BOUNDS = [0.33, 0.31, 0.29, 0.27, 0.25, 0.23, 0.21, 0.17, 0.0]


def _lookup(value: float, bounds: list[float], probs: list[float]) -> float:
    for i, bound in enumerate(bounds):
        if value >= bound:
            return probs[i]
    return probs[-1]


def fickett_score(seq: str) -> float:
    """Fickett TESTCODE score of a sequence (higher: more coding-like)."""
    if len(seq) < 2:
        return 0.0
    score = 0.0
    for base in "ACGT":
        content = seq.count(base) / len(seq)
        phases = [seq[p::3].count(base) for p in range(3)]
        position = max(phases) / (min(phases) + 1.0)
        score += _lookup(content, CONTENT_BOUNDS, CONTENT_PROB[base]) * CONTENT_WEIGHT[base]
        score += _lookup(position, POSITION_BOUNDS, POSITION_PROB[base]) * POSITION_WEIGHT[base]
    return score


def _hexamers(seq: str, step: int) -> list[str]:
    return [seq[i:i + 6] for i in range(0, len(seq) - 5, step)]


class HexamerTable:
    """In-frame hexamer frequencies of coding ORFs vs all-frame hexamers of non-coding RNAs.

    CPAT learns the coding table from annotated CDSs; without annotation the longest ORF
    of each training mRNA stands in for its CDS.
    """

    def __init__(self, coding: dict[str, float], noncoding: dict[str, float]) -> None:
        self.coding, self.noncoding = coding, noncoding

    @classmethod
    def fit(cls, coding_seqs: list[str], noncoding_seqs: list[str]) -> HexamerTable:
        cod, non = Counter(), Counter()
        for s in coding_seqs:
            orf = longest_orf(s)
            if orf is not None:
                cod.update(_hexamers(s[orf.start:orf.end], 3))
        for s in noncoding_seqs:
            non.update(_hexamers(s, 1))
        keys = set(cod) | set(non)
        n_c, n_n = sum(cod.values()) + len(keys), sum(non.values()) + len(keys)
        return cls({k: (cod[k] + 1) / n_c for k in keys}, {k: (non[k] + 1) / n_n for k in keys})

    def score(self, seq: str) -> float:
        """Mean log(F_coding / F_noncoding) of the in-frame hexamers of the longest ORF."""
        orf = longest_orf(seq)
        region = seq[orf.start:orf.end] if orf is not None else seq
        hexes = [h for h in _hexamers(region, 3) if h in self.coding]
        if not hexes:
            return 0.0
        return float(np.mean([math.log(self.coding[h] / self.noncoding[h]) for h in hexes]))


FEATURE_NAMES = ["log_length", "log_orf_length", "orf_coverage", "fickett", "hexamer"]


def orf_features(seqs: list[str], hexamer: HexamerTable) -> np.ndarray:
    """One row per sequence: the CPC2/CPAT feature family (FEATURE_NAMES)."""
    rows = []
    for s in seqs:
        orf = longest_orf(s)
        orf_len = orf.length if orf else 0
        rows.append([math.log(len(s)), math.log1p(orf_len), orf_len / len(s),
                     fickett_score(s), hexamer.score(s)])
    return np.asarray(rows, dtype=np.float64)


def kmer_frequencies(seqs: list[str], ks: tuple[int, ...] = (1, 2, 3, 4, 5)) -> np.ndarray:
    """Normalised k-mer counts (all frames) for each k, concatenated; N-holding k-mers skipped."""
    import itertools
    cols = []
    for k in ks:
        index = {"".join(p): i for i, p in enumerate(itertools.product("ACGT", repeat=k))}
        mat = np.zeros((len(seqs), len(index)))
        for r, s in enumerate(seqs):
            counts = Counter(s[i:i + k] for i in range(len(s) - k + 1))
            for km, c in counts.items():
                j = index.get(km)
                if j is not None:
                    mat[r, j] = c
            total = mat[r].sum()
            if total:
                mat[r] /= total
        cols.append(mat)
    return np.concatenate(cols, axis=1)
