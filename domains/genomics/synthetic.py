"""Synthetic transcripts for tests and for users with no data.

    mRNA    5'UTR ─ ATG ─ CDS (human codon usage) ─ stop ─ 3'UTR
    lncRNA  UTR-like sequence without long ORFs

Codons follow human usage (python-codon-tables, h_sapiens_9606, CC0) over human amino
acid frequencies; UTRs and lncRNAs are drawn with human non-coding base composition and
its CpG depletion. Lengths are log-normal around human
medians (5'UTR ~150 nt, CDS ~1.2 kb, 3'UTR ~0.8 kb, lncRNA ~0.9 kb). Hard cases keep
the task from being trivial: a fraction of mRNAs have short CDSs (30-100 codons), a
fraction of lncRNAs carry a spurious 50-100-codon ORF with uniform codon usage.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fasta import Record, write_fasta

# Approximate amino-acid composition of the human proteome (UniProt), in percent
AA_FREQ = {"A": 7.0, "R": 5.6, "N": 3.6, "D": 4.7, "C": 2.3, "Q": 4.7, "E": 7.1, "G": 6.6,
           "H": 2.6, "I": 4.3, "L": 10.0, "K": 5.7, "M": 2.1, "F": 3.6, "P": 6.3, "S": 8.3,
           "T": 5.4, "W": 1.2, "Y": 2.7, "V": 6.0}
SENSE = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"
         if a + b + c not in ("TAA", "TAG", "TGA")]
# base composition of human UTRs / lncRNAs (A, C, G, T), roughly 45% GC
BASE_P = [0.27, 0.23, 0.23, 0.27]


@dataclass
class SyntheticConfig:
    n_coding: int = 200
    n_noncoding: int = 200
    hard_fraction: float = 0.2
    utr5_median: float = 150
    cds_codons_median: float = 400
    utr3_median: float = 800
    lnc_median: float = 900
    max_length: int = 12000
    seed: int = 0


class TranscriptGenerator:
    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.cfg = config or SyntheticConfig()
        self.rng = np.random.default_rng(self.cfg.seed)
        import python_codon_tables as pct
        table = pct.get_codons_table("h_sapiens_9606")
        codons, weights = [], []
        total_aa = sum(AA_FREQ.values())
        for aa, freq in AA_FREQ.items():
            usage = table[aa]
            norm = sum(usage.values())
            for codon, w in usage.items():
                codons.append(codon)
                weights.append(freq / total_aa * w / norm)
        self.codons = np.asarray(codons)
        self.codon_p = np.asarray(weights) / sum(weights)
        self.stops = np.asarray(list(table["*"]))
        self.stop_p = np.asarray(list(table["*"].values()))
        self.stop_p = self.stop_p / self.stop_p.sum()

    def _lognormal(self, median: float, sigma: float, low: int) -> int:
        return max(low, int(self.rng.lognormal(np.log(median), sigma)))

    def _noncoding(self, n: int, max_orf_codons: int = 60) -> str:
        """Non-coding-like sequence whose ATG-started ORFs stop within `max_orf_codons`."""
        bases = self.rng.choice(np.frombuffer(b"ACGT", dtype=np.uint8), n, p=BASE_P)
        # CpG depletion: three of four CG become CA or TG (deamination footprint)
        cg = np.flatnonzero((bases[:-1] == ord("C")) & (bases[1:] == ord("G")))
        cg = cg[self.rng.random(len(cg)) < 0.75]
        to_ca = self.rng.random(len(cg)) < 0.5
        bases[cg[to_ca] + 1] = ord("A")
        bases[cg[~to_ca]] = ord("T")
        return self._break_orfs(bases.tobytes().decode(), max_orf_codons)

    def _break_orfs(self, seq: str, max_codons: int) -> str:
        """Put an in-frame stop 10..max_codons/2 codons after the ATG of any ORF that would
        run past `max_codons`; repeat until no frame has one (a new stop rarely opens
        another)."""
        s = bytearray(seq.encode())
        stops = {b"TAA", b"TAG", b"TGA"}
        for _ in range(10):
            changed = False
            for frame in range(3):
                start = None
                for j in range(frame, len(s) - 2, 3):
                    codon = bytes(s[j:j + 3])
                    if start is None:
                        if codon == b"ATG":
                            gap = int(self.rng.integers(10, max(11, max_codons // 2)))
                            start, cut = j, j + 3 * gap
                    elif codon in stops:
                        start = None
                    elif j >= cut:
                        s[j:j + 3] = str(self.rng.choice(self.stops)).encode()
                        start, changed = None, True
            if not changed:
                break
        return s.decode()

    def coding(self, i: int, hard: bool) -> Record:
        c = self.cfg
        n_codons = (int(self.rng.integers(30, 101)) if hard
                    else self._lognormal(c.cds_codons_median, 0.6, 100))
        cds = "ATG" + "".join(self.rng.choice(self.codons, n_codons - 1, p=self.codon_p)) \
            + str(self.rng.choice(self.stops, p=self.stop_p))
        utr5 = self._noncoding(self._lognormal(c.utr5_median, 0.6, 10), 30)
        utr3 = self._noncoding(self._lognormal(c.utr3_median, 0.9, 30), 30)
        seq = (utr5 + cds + utr3)[:c.max_length]
        return Record(f"syn_mRNA_{i:05d}", seq,
                      f"cds={len(utr5) + 1}-{len(utr5) + len(cds)} hard={int(hard)}")

    def noncoding(self, i: int, hard: bool) -> Record:
        c = self.cfg
        n = min(self._lognormal(c.lnc_median, 0.8, 200), c.max_length)
        seq = self._noncoding(n, 40)
        desc = "hard=0"
        if hard:
            n_codons = int(self.rng.integers(50, 101))
            orf = "ATG" + "".join(self.rng.choice(SENSE, n_codons - 1)) + str(
                self.rng.choice(self.stops))
            at = int(self.rng.integers(0, max(1, len(seq) - len(orf))))
            seq = (seq[:at] + orf + seq[at + len(orf):])[:max(len(seq), len(orf))]
            desc = f"orf={at + 1}-{at + len(orf)} hard=1"
        return Record(f"syn_lncRNA_{i:05d}", seq, desc)

    def generate(self) -> tuple[list[Record], list[int]]:
        """(records, labels): coding first (label 1), then non-coding (label 0)."""
        from tqdm import tqdm
        c = self.cfg
        hard_c = self.rng.random(c.n_coding) < c.hard_fraction
        hard_n = self.rng.random(c.n_noncoding) < c.hard_fraction
        total = c.n_coding + c.n_noncoding
        records = []
        with tqdm(total=total, desc="synthetic transcripts", disable=total < 2000) as bar:
            for i in range(c.n_coding):
                records.append(self.coding(i, bool(hard_c[i])))
                bar.update()
            for i in range(c.n_noncoding):
                records.append(self.noncoding(i, bool(hard_n[i])))
                bar.update()
        return records, [1] * c.n_coding + [0] * c.n_noncoding


def synthetic_transcripts(n_coding: int = 200, n_noncoding: int = 200, seed: int = 0,
                          hard_fraction: float = 0.2, **kw) -> tuple[list[Record], list[int]]:
    cfg = SyntheticConfig(n_coding=n_coding, n_noncoding=n_noncoding, seed=seed,
                          hard_fraction=hard_fraction, **kw)
    return TranscriptGenerator(cfg).generate()


def write_synthetic(out_dir, n_coding: int = 200, n_noncoding: int = 200, seed: int = 0):
    """coding.fa and noncoding.fa in `out_dir`, for the CLI (`--data.coding`, ...)."""
    from pathlib import Path
    records, labels = synthetic_transcripts(n_coding, n_noncoding, seed)
    out = Path(out_dir)
    return (write_fasta([r for r, y in zip(records, labels) if y == 1], out / "coding.fa"),
            write_fasta([r for r, y in zip(records, labels) if y == 0], out / "noncoding.fa"))
