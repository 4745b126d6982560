"""Classic coding-potential baselines, fitted on the same training split as the model.

- `orf`: the CPC2/CPAT feature family (log length, longest-ORF length and coverage,
  Fickett score, hexamer score) with logistic regression, as CPAT does (Wang et al.
  2013 use logistic regression on these four features; length is added here because
  the model sees it too);
- `kmer`: k-mer frequencies (k = 1..5) plus log length, L2 logistic regression;
- `length`: transcript length alone, the floor any model must clear (AUROC ~0.90 on
  CPAT's human set).

Each is a `Baseline` with `fit(seqs, labels)` and `predict_proba(seqs)` (coding
probability), so benchmarks treat them and the model alike.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np

from .features import HexamerTable, kmer_frequencies, orf_features

Kind = Literal["orf", "kmer", "length"]
NAMES = {"orf": "ORF/Fickett/hexamer LR", "kmer": "k-mer LR", "length": "length only"}


class Baseline:
    def __init__(self, kind: Kind = "orf", C: float = 1.0) -> None:
        if kind not in NAMES:
            raise ValueError(f"baseline kind must be one of {list(NAMES)}, got {kind!r}")
        self.kind, self.C = kind, C
        self.hexamer: HexamerTable | None = None
        self.model = None

    @property
    def name(self) -> str:
        return NAMES[self.kind]

    def features(self, seqs: list[str]) -> np.ndarray:
        if self.kind == "orf":
            return orf_features(seqs, self.hexamer)
        if self.kind == "kmer":
            logs = np.asarray([[math.log(len(s))] for s in seqs])
            return np.concatenate([kmer_frequencies(seqs), logs], axis=1)
        return np.asarray([[math.log(len(s))] for s in seqs])

    def fit(self, seqs: list[str], labels: list[int]) -> Baseline:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        if self.kind == "orf":
            self.hexamer = HexamerTable.fit([s for s, y in zip(seqs, labels) if y == 1],
                                            [s for s, y in zip(seqs, labels) if y == 0])
        self.model = make_pipeline(StandardScaler(),
                                   LogisticRegression(C=self.C, max_iter=2000))
        self.model.fit(self.features(seqs), np.asarray(labels))
        return self

    def predict_proba(self, seqs: list[str]) -> np.ndarray:
        """Coding probability of each sequence."""
        if self.model is None:
            raise RuntimeError(f"baseline {self.name} is not fitted")
        return self.model.predict_proba(self.features(seqs))[:, 1]

    def n_parameters(self) -> int:
        lr = self.model[-1]
        return int(lr.coef_.size + lr.intercept_.size)
