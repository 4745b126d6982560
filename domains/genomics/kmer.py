"""k-mer tokens for a BERT over nucleotides, and the windows that cover a long transcript.

A sequence becomes the k-mers that start every `stride` nucleotides:

    ATGGCCAAGTAA   k=6, stride=3:   ATGGCC  GCCAAG  AAGTAA
                                    |--||--|
                                     stride 3 = one codon

stride 1 is DNABERT's overlapping layout (Ji et al. 2021); stride 3 with k=6 makes every
token a codon pair, so each of the three reading frames has a whole codon inside every
token (a stop codon in any frame is visible in one token) while a window of 510 tokens
covers ~1.5 kb instead of ~0.5 kb. A k-mer holding N (or shorter than k at the end)
is [UNK]. The vocabulary file is BERT's `vocab.txt`: one token a line, the id is the
line number, special tokens first.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from lorakit.errors import DataError

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CONFIG_NAME = "kmer_tokenizer.json"


def kmer_vocab(k: int) -> list[str]:
    """Special tokens, then all 4^k k-mers in lexicographic order."""
    return SPECIAL + ["".join(p) for p in itertools.product("ACGT", repeat=k)]


@dataclass
class Window:
    """Token ids of one window and the nucleotide span [start, end) it covers."""
    ids: list[int]
    start: int
    end: int


class KmerTokenizer:
    """k-mer tokenizer with a BERT vocab.txt; `encode` adds [CLS] ... [SEP]."""

    def __init__(self, k: int = 6, stride: int = 3, vocab: list[str] | None = None) -> None:
        if k < 1 or stride < 1:
            raise DataError(f"k and stride must be >= 1, got k={k}, stride={stride}")
        if stride > k:
            raise DataError(f"stride {stride} > k {k} would skip nucleotides")
        self.k, self.stride = k, stride
        self.vocab = list(vocab) if vocab is not None else kmer_vocab(k)
        self.index = {t: i for i, t in enumerate(self.vocab)}
        missing = [t for t in SPECIAL if t not in self.index]
        if missing:
            raise DataError(f"k-mer vocabulary lacks special tokens {missing}")
        kmers = [t for t in self.vocab if t not in SPECIAL]
        if any(len(t) != k for t in kmers):
            raise DataError(f"k-mer vocabulary holds tokens whose length is not k={k}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            self.index[t] for t in SPECIAL)

    def __len__(self) -> int:
        return len(self.vocab)

    # --- files ----------------------------------------------------------------------
    def save(self, folder) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.txt").write_text("\n".join(self.vocab) + "\n")
        (folder / CONFIG_NAME).write_text(json.dumps({"k": self.k, "stride": self.stride}))
        return folder

    @classmethod
    def from_folder(cls, folder, stride: int | None = None) -> KmerTokenizer:
        """Read `vocab.txt` (k is the length of its k-mers) and the stride from
        `kmer_tokenizer.json` when present (else 1, DNABERT's overlapping layout)."""
        folder = Path(folder)
        vocab_file = folder / "vocab.txt"
        if not vocab_file.is_file():
            raise DataError(f"{folder} has no vocab.txt: a k-mer BERT folder needs its "
                            "vocabulary (one token a line)")
        vocab = [line.strip() for line in vocab_file.read_text().splitlines() if line.strip()]
        kmers = [t for t in vocab if t not in SPECIAL]
        lengths = {len(t) for t in kmers}
        if len(lengths) != 1 or not set("".join(kmers)) <= set("ACGT"):
            raise DataError(f"{vocab_file} is not a k-mer vocabulary (tokens of one length "
                            "over ACGT after the special tokens)")
        k = lengths.pop()
        conf = folder / CONFIG_NAME
        if stride is None:
            stride = json.loads(conf.read_text())["stride"] if conf.is_file() else 1
        return cls(k=k, stride=stride, vocab=vocab)

    # --- tokens -----------------------------------------------------------------------
    def kmers(self, seq: str) -> list[str]:
        """The k-mers starting every `stride` nucleotides; a sequence shorter than k gives
        one (short) k-mer, which encodes as [UNK]."""
        if len(seq) < self.k:
            return [seq]
        last = len(seq) - self.k
        starts = list(range(0, last + 1, self.stride))
        if starts[-1] != last:  # the tail must be covered, even off the stride grid
            starts.append(last)
        return [seq[i:i + self.k] for i in starts]

    def ids(self, seq: str) -> list[int]:
        """Token ids of the k-mers, without special tokens."""
        return [self.index.get(km, self.unk_id) for km in self.kmers(seq)]

    def encode(self, seq: str) -> list[int]:
        return [self.cls_id, *self.ids(seq), self.sep_id]

    def decode(self, ids: list[int]) -> str:
        """Sequence back from k-mer ids (special tokens skipped): the first k-mer whole,
        then the last `stride` letters of each next k-mer (the tail k-mer may overlap
        its predecessor by more)."""
        kmers = [self.vocab[i] for i in ids if self.vocab[i] not in SPECIAL]
        if not kmers:
            return ""
        return "".join([kmers[0]] + [km[-self.stride:] for km in kmers[1:]])

    def decode_sequence(self, seq_len: int, ids: list[int]) -> str:
        """Exact inverse of `ids` for a sequence of known length."""
        kmers = [self.vocab[i] for i in ids if self.vocab[i] not in SPECIAL]
        out = list(kmers[0]) if kmers else []
        last = seq_len - self.k
        for j, km in enumerate(kmers[1:], start=1):
            start = min(j * self.stride, last)
            out[start:] = list(km)
        return "".join(out)

    # --- windows over long transcripts ------------------------------------------------
    def windows(self, seq: str, max_tokens: int, overlap: int = 0) -> list[Window]:
        """Windows of at most `max_tokens` k-mers (plus [CLS]/[SEP]) that together cover
        every nucleotide; consecutive windows share `overlap` tokens."""
        ids = self.ids(seq)
        if max_tokens < 1 or not 0 <= overlap < max_tokens:
            raise DataError(f"need max_tokens >= 1 and 0 <= overlap < max_tokens, got "
                            f"{max_tokens}, {overlap}")
        starts_nt = [min(j * self.stride, max(len(seq) - self.k, 0)) for j in range(len(ids))]
        out = []
        step = max_tokens - overlap
        for a in range(0, len(ids), step):
            b = min(a + max_tokens, len(ids))
            out.append(Window([self.cls_id, *ids[a:b], self.sep_id], starts_nt[a],
                              min(starts_nt[b - 1] + self.k, len(seq))))
            if b == len(ids):
                break
        return out

    def head_tail(self, seq: str, max_tokens: int) -> Window:
        """One window: the first and last max_tokens/2 k-mers (Sun et al. 2019's head+tail
        truncation for long documents); the whole sequence when it fits."""
        ids = self.ids(seq)
        if len(ids) <= max_tokens:
            return Window([self.cls_id, *ids, self.sep_id], 0, len(seq))
        head = max_tokens // 2
        tail = max_tokens - head
        return Window([self.cls_id, *ids[:head], *ids[-tail:], self.sep_id], 0, len(seq))
