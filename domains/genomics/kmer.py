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

Reading frames. With `frames` = 3 (k=3, stride 3: codon tokens) a transcript is read
three times, from nucleotide 0, 1 and 2, so one of the three token streams is the
coding frame of whatever CDS the transcript holds, whose stop codon is one token:

    frame 0:  ATG GCC AAG TAA ...
    frame 1:   TGG CCA AGT AA.
    frame 2:    GGC CAA GTA A..

`frame_windows` cuts each stream into the same windows (window j of every frame starts
at the same nucleotide, shifted by the frame), so a model can pool over windows and
frames alike: "some frame of some window holds a long ORF" is a max.
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
    frame: int = 0
    group: int = 0  # the window's index along the transcript (the same in every frame)


class KmerTokenizer:
    """k-mer tokenizer with a BERT vocab.txt; `encode` adds [CLS] ... [SEP]."""

    def __init__(self, k: int = 6, stride: int = 3, vocab: list[str] | None = None,
                 frames: int = 1) -> None:
        if k < 1 or stride < 1:
            raise DataError(f"k and stride must be >= 1, got k={k}, stride={stride}")
        if stride > k:
            raise DataError(f"stride {stride} > k {k} would skip nucleotides")
        if not 1 <= frames <= stride:
            raise DataError(f"frames must be between 1 and the stride {stride} (frame f reads "
                            f"from nucleotide f), got {frames}")
        self.k, self.stride, self.frames = k, stride, frames
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
        (folder / CONFIG_NAME).write_text(json.dumps({"k": self.k, "stride": self.stride,
                                                      "frames": self.frames}))
        return folder

    @classmethod
    def from_folder(cls, folder, stride: int | None = None,
                    frames: int | None = None) -> KmerTokenizer:
        """Read `vocab.txt` (k is the length of its k-mers) and the stride and frames from
        `kmer_tokenizer.json` when present (else stride 1, DNABERT's overlapping layout,
        and one frame)."""
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
        saved = json.loads(conf.read_text()) if conf.is_file() else {}
        stride = stride if stride is not None else saved.get("stride", 1)
        frames = frames if frames is not None else min(saved.get("frames", 1), stride)
        return cls(k=k, stride=stride, vocab=vocab, frames=frames)

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

    # --- every reading frame ----------------------------------------------------------
    def frame_ids(self, seq: str) -> list[list[int]]:
        """Token ids of each frame's stream: frame f reads seq[f:]."""
        return [self.ids(seq[f:]) for f in range(self.frames)]

    def frame_windows(self, seq: str, max_tokens: int, overlap: int = 0) -> list[Window]:
        """`windows` of every frame, window-major (window 0 of frames 0..F-1, then window
        1, ...); `group` is the window's index, `start`/`end` are positions in `seq`."""
        return self._every_frame(seq, lambda s: self.windows(s, max_tokens, overlap))

    def frame_head_tail(self, seq: str, max_tokens: int) -> list[Window]:
        """`head_tail` of every frame."""
        return self._every_frame(seq, lambda s: [self.head_tail(s, max_tokens)])

    def _every_frame(self, seq: str, cut) -> list[Window]:
        """`cut` applied to each frame's stream seq[f:], positions mapped back to `seq`."""
        out = [Window(w.ids, w.start + f, w.end + f, f, j)
               for f in range(self.frames) for j, w in enumerate(cut(seq[f:]))]
        return sorted(out, key=lambda w: (w.group, w.frame))
