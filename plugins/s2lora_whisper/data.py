"""`SpeechDataModule`: manifests of (audio, transcript) to batches of 16 kHz audio.

Given no manifests, it uses the embedded synthetic corpus (espeak-ng adult and child
voices, `lorakit.domains.speech.synthetic`): child_train to train, child_val to
validate, and three test sets, child_test (in-domain), child_ood and adult_test.

A batch is {"audio": (B, samples) float32 zero-padded, "text": [...], "path": [...],
"set": [...]}; the module turns audio into log-mel for its own context length.
"""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lorakit.domains.speech.audio import SAMPLE_RATE
from lorakit.domains.speech.manifest import TooLong, limit_duration, read_manifest
from lorakit.domains.speech.synthetic import CorpusConfig, build_corpus
from lorakit.domains.speech.utterances import UtteranceDataset, collate
from lorakit.errors import DataError


class SpeechDataModule(pl.LightningDataModule):
    """Speech manifests (JSONL or CSV: audio, text, optional speaker) for Whisper.

    Args:
        train_manifest: training manifest; None with no other manifest uses the
            synthetic corpus.
        val_manifest: validation manifest.
        test_manifest: one manifest or a list; each is a test set named by its file stem.
        predict_manifest: clips to transcribe (text column optional).
        batch_size: clips per batch.
        num_workers: DataLoader workers.
        too_long: clips longer than the encoder context: 'error' (default) stops with
            their count, 'skip' drops them, 'truncate' cuts them; the count is reported.
        max_seconds: the context length in seconds; None takes it from the model.
        synthetic: size and seed of the synthetic corpus.
        corpus_dir: where the synthetic corpus is built (default: the lorakit cache).
    """

    def __init__(self, train_manifest: str | None = None, val_manifest: str | None = None,
                 test_manifest: str | list[str] | None = None,
                 predict_manifest: str | None = None, batch_size: int = 16,
                 num_workers: int = 0, too_long: TooLong = "error",
                 max_seconds: float | None = None,
                 synthetic: CorpusConfig = CorpusConfig(), corpus_dir: str | None = None) -> None:
        super().__init__()
        if too_long not in ("error", "skip", "truncate"):
            raise DataError(f"too_long must be 'error', 'skip' or 'truncate', got {too_long!r}")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.too_long, self.max_seconds = too_long, max_seconds
        self.manifests: dict[str, list[str]] = {
            "train": [train_manifest] if train_manifest else [],
            "val": [val_manifest] if val_manifest else [],
            "test": [test_manifest] if isinstance(test_manifest, str) else list(test_manifest or []),
            "predict": [predict_manifest] if predict_manifest else []}
        if not any(self.manifests.values()):
            corpus = build_corpus(synthetic, Path(corpus_dir) if corpus_dir else None)
            self.manifests.update(
                train=[str(corpus / "child_train.jsonl")], val=[str(corpus / "child_val.jsonl")],
                test=[str(corpus / f"{s}.jsonl") for s in ("child_test", "child_ood",
                                                           "adult_test")])
        self.datasets: dict[str, list[UtteranceDataset]] = {}

    def _seconds(self) -> float:
        if self.max_seconds is not None:
            return self.max_seconds
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None or not hasattr(module, "clip_seconds"):
            raise DataError("SpeechDataModule needs max_seconds when used without a "
                            "Whisper module to take the context length from")
        return module.clip_seconds

    def _load(self, stage: str) -> list[UtteranceDataset]:
        seconds = self._seconds()
        sets = []
        for path in self.manifests[stage]:
            utterances = read_manifest(path, require_text=stage != "predict")
            total = len(utterances)
            utterances, n_long = limit_duration(utterances, seconds, self.too_long, path)
            if n_long:
                action = "skipped" if self.too_long == "skip" else f"truncated to {seconds:g} s"
                rank_zero_info(f"lorakit: {n_long} of {total} clips in {path} are longer "
                               f"than {seconds:g} s: {action}")
            sets.append(UtteranceDataset(utterances, Path(path).stem,
                                         int(round(seconds * SAMPLE_RATE))))
        return sets

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": ("predict",)}.get(stage, ("train", "val", "test", "predict"))
        for split in wanted:
            if split not in self.datasets and self.manifests[split]:
                self.datasets[split] = self._load(split)

    def _loaders(self, split: str, shuffle: bool = False):
        if not self.datasets.get(split):
            raise DataError(f"no {split} manifest given: set --data.{split}_manifest")
        loaders = [DataLoader(d, batch_size=self.batch_size, shuffle=shuffle,
                              num_workers=self.num_workers, collate_fn=collate)
                   for d in self.datasets[split]]
        return loaders[0] if len(loaders) == 1 else loaders

    def train_dataloader(self):
        return self._loaders("train", shuffle=True)

    def val_dataloader(self):
        return self._loaders("val") if self.datasets.get("val") else []

    def test_dataloader(self):
        return self._loaders("test")

    def predict_dataloader(self):
        return self._loaders("predict")
