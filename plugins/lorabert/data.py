"""`TranscriptDataModule`: labelled transcripts (mRNA = 1, lncRNA = 0) and FASTA to predict.

Where the transcripts come from (`source`):

- "files": `coding` / `noncoding` FASTA files (plain or .gz), split stratified with a
  fixed seed into train / val / test, or explicit files per split (`val_coding`,
  `test_noncoding`, ...), which then take precedence for that split;
- "cpat_human": CPAT's human test set (4,000 + 4,000), fetched and cached on first
  use, split the same way (seed 0 by default; its test split is the final table's);
- "synthetic": the generator in `lorakit.domains.genomics.synthetic`.

Batches are lists of records, not tensors: the LightningModule owns the tokenizer
(it comes with the pretrained model) and turns each transcript into its windows.
`predict` reads `fasta` (unlabelled) when given, else the test split.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from lorakit.domains.genomics.fasta import Record, read_fasta
from lorakit.domains.genomics.split import stratified_split
from lorakit.errors import DataError

Source = Literal["files", "cpat_human", "synthetic"]


class Transcript(NamedTuple):
    id: str
    seq: str
    label: int  # 1 coding, 0 non-coding, -1 unknown (prediction)


class TranscriptDataset(Dataset):
    def __init__(self, items: list[Transcript]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Transcript:
        return self.items[i]


def collate(batch: list[Transcript]) -> list[Transcript]:
    return list(batch)


def _as_list(files) -> list[str]:
    if files is None:
        return []
    return [files] if isinstance(files, str) else list(files)


def _check_unique(records: list[Record], what: str) -> None:
    seen: dict[str, str] = {}
    for r in records:
        if r.id in seen:
            raise DataError(f"record id {r.id!r} (line {r.line}) appears twice across the "
                            f"{what} files; ids must be unique")
        seen[r.id] = r.id


class TranscriptDataModule(pl.LightningDataModule):
    """Transcripts for `lorakit lorabert fit|validate|test|predict`.

    Args:
        source: "files", "cpat_human" or "synthetic" (see the module docstring); None:
            "files" when any FASTA is given, else "synthetic".
        coding: FASTA file(s) of coding transcripts (mRNAs), label 1.
        noncoding: FASTA file(s) of non-coding transcripts (lncRNAs), label 0.
        val_coding: FASTA file(s) of validation coding transcripts (label 1); with
            val_coding or val_noncoding given, no validation share is drawn from
            coding/noncoding (the same for test_*).
        val_noncoding: FASTA file(s) of validation non-coding transcripts (label 0).
        test_coding: FASTA file(s) of test coding transcripts (label 1).
        test_noncoding: FASTA file(s) of test non-coding transcripts (label 0).
        fasta: FASTA file(s) to predict (no labels).
        val_fraction: share of each class drawn for validation (stratified split).
        test_fraction: share of each class drawn for test (stratified split).
        seed: seed of the stratified split and of the synthetic transcripts.
        max_per_class: keep at most this many transcripts per class in each split (quick
            runs); the first ones of a seeded shuffle, so runs are comparable.
        synthetic_n: transcripts per class for source "synthetic".
        ambiguous: "reject" IUPAC ambiguity codes, or map them to "N".
        batch_size: transcripts per batch (each becomes one or more windows).
        num_workers: DataLoader worker processes.
    """

    def __init__(self, source: Source | None = None, coding: list[str] | str | None = None,
                 noncoding: list[str] | str | None = None,
                 val_coding: list[str] | str | None = None,
                 val_noncoding: list[str] | str | None = None,
                 test_coding: list[str] | str | None = None,
                 test_noncoding: list[str] | str | None = None,
                 fasta: list[str] | str | None = None, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, seed: int = 0, max_per_class: int | None = None,
                 synthetic_n: int = 300, ambiguous: Literal["reject", "N"] = "reject",
                 batch_size: int = 8, num_workers: int = 0) -> None:
        super().__init__()
        if source not in (None, "files", "cpat_human", "synthetic"):
            raise DataError(f"data.source must be 'files', 'cpat_human' or 'synthetic', "
                            f"got {source!r}")
        self.files = {"coding": _as_list(coding), "noncoding": _as_list(noncoding),
                      "val_coding": _as_list(val_coding),
                      "val_noncoding": _as_list(val_noncoding),
                      "test_coding": _as_list(test_coding),
                      "test_noncoding": _as_list(test_noncoding)}
        self.fasta = _as_list(fasta)
        given = any(self.files.values())
        self.source = source or ("files" if given else "synthetic")
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.max_per_class = max_per_class
        self.synthetic_n = synthetic_n
        self.ambiguous = ambiguous
        self.batch_size, self.num_workers = batch_size, num_workers
        self.splits: dict[str, list[Transcript]] = {}
        self.predict_items: list[Transcript] = []

    # --- reading ------------------------------------------------------------------------
    def _read(self, files: list[str]) -> list[Record]:
        return [r for f in files for r in read_fasta(f, ambiguous=self.ambiguous)]

    def _labelled(self) -> tuple[list[Record], list[int]]:
        if self.source == "cpat_human":
            from lorakit.domains.genomics.cpat_data import load_cpat_human
            return load_cpat_human()
        if self.source == "synthetic":
            from lorakit.domains.genomics.synthetic import synthetic_transcripts
            return synthetic_transcripts(self.synthetic_n, self.synthetic_n, seed=self.seed)
        if not self.files["coding"] or not self.files["noncoding"]:
            raise DataError("data.source 'files' needs --data.coding FASTA and "
                            "--data.noncoding FASTA (or data.source cpat_human / synthetic)")
        coding, noncoding = self._read(self.files["coding"]), self._read(self.files["noncoding"])
        _check_unique(coding + noncoding, "coding and non-coding")
        return coding + noncoding, [1] * len(coding) + [0] * len(noncoding)

    def _cap(self, items: list[Transcript]) -> list[Transcript]:
        if self.max_per_class is None:
            return items
        out, count = [], {0: 0, 1: 0}
        for t in items:
            if count.get(t.label, 0) < self.max_per_class:
                out.append(t)
                count[t.label] = count.get(t.label, 0) + 1
        return out

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" and self.fasta:
            records = self._read(self.fasta)
            _check_unique(records, "prediction")
            self.predict_items = [Transcript(r.id, r.seq, -1) for r in records]
            return
        if self.splits:
            return
        records, labels = self._labelled()
        explicit_val = self.files["val_coding"] or self.files["val_noncoding"]
        explicit_test = self.files["test_coding"] or self.files["test_noncoding"]
        split = stratified_split(labels, val=0.0 if explicit_val else self.val_fraction,
                                 test=0.0 if explicit_test else self.test_fraction,
                                 seed=self.seed)
        import numpy as np
        rng = np.random.default_rng(self.seed)
        for name, idx in split.items():
            idx = [idx[i] for i in rng.permutation(len(idx))] if self.max_per_class else idx
            self.splits[name] = self._cap([Transcript(records[i].id, records[i].seq, labels[i])
                                           for i in idx])
        for name, on in (("val", explicit_val), ("test", explicit_test)):
            if on:
                cod = self._read(self.files[f"{name}_coding"])
                non = self._read(self.files[f"{name}_noncoding"])
                self.splits[name] = self._cap([Transcript(r.id, r.seq, 1) for r in cod]
                                              + [Transcript(r.id, r.seq, 0) for r in non])
        if not self.splits["train"] and stage in (None, "fit"):
            raise DataError("the training split is empty: give more transcripts or lower "
                            "val_fraction / test_fraction")
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        rank_zero_info(f"lorabert data ({self.source}): {sizes} transcripts")

    # --- loaders ------------------------------------------------------------------------
    def _loader(self, items: list[Transcript], shuffle: bool) -> DataLoader:
        return DataLoader(TranscriptDataset(items), batch_size=self.batch_size, shuffle=shuffle,
                          collate_fn=collate, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.splits["train"], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits["val"], shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits["test"], shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_items:
            return self._loader(self.predict_items, shuffle=False)
        if not self.splits:
            self.setup("test")
        return self._loader(self.splits["test"], shuffle=False)
