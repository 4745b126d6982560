"""One row of a comparison: train a model (or a baseline) on a split, time it, score it.

Shared by the demo and the benchmark suite so both report the same numbers the same way:
metrics on the held-out test split, trainable parameters, training time and prediction
time per 1,000 transcripts, plus the test probabilities for the ROC plot. `extra` names
more sets to score with the same fitted model (validation, fragments, another species):
their coding probabilities come back under `row["extra"][name]`.
"""
from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from lorakit.domains.genomics.baselines import Baseline
from lorakit.domains.genomics.metrics import binary_metrics

from .data import Transcript, TranscriptDataset, collate
from .module import LoRABertModule


def split_items(source: str = "cpat_human", train_per_class: int | None = None,
                seed: int = 0, synthetic_n: int = 300) -> dict[str, list[Transcript]]:
    """train / val / test of CPAT human (or synthetic); the training split optionally cut
    to `train_per_class` transcripts per class (seeded), val and test left whole."""
    from .data import TranscriptDataModule
    dm = TranscriptDataModule(source=source, seed=seed, synthetic_n=synthetic_n)
    dm.setup("fit")
    splits = dict(dm.splits)
    if train_per_class:
        splits["train"] = cut_per_class(splits["train"], train_per_class, seed)
    return splits


def cut_per_class(items: list[Transcript], per_class: int, seed: int) -> list[Transcript]:
    """At most `per_class` transcripts of each label, the first ones of a seeded shuffle."""
    rng = np.random.default_rng(seed)
    kept, count = [], {0: 0, 1: 0}
    for i in rng.permutation(len(items)):
        if count[items[i].label] < per_class:
            kept.append(items[i])
            count[items[i].label] += 1
    return kept


def _loader(items, batch_size, shuffle):
    return torch.utils.data.DataLoader(TranscriptDataset(items), batch_size=batch_size,
                                       shuffle=shuffle, collate_fn=collate)


@torch.no_grad()
def predict_probs(module: LoRABertModule, items: list[Transcript],
                  batch_size: int = 16) -> np.ndarray:
    was_training = module.training
    module.eval()
    out = []
    for a in range(0, len(items), batch_size):
        logits, _ = module([t.seq for t in items[a:a + batch_size]])
        out.append(logits.softmax(-1)[:, 1].float().cpu().numpy())
    module.train(was_training)
    return np.concatenate(out)


def run_model(name: str, splits: dict[str, list[Transcript]], out_dir: Path,
              epochs: int = 2, batch_size: int = 8, seed: int = 0,
              extra: dict[str, list[Transcript]] | None = None, **module_kw) -> dict:
    """Fit a LoRABertModule (mode etc. in `module_kw`), score it on the test split."""
    pl.seed_everything(seed, verbose=False)
    module = LoRABertModule(**module_kw)
    trainable = sum(p.numel() for p in module.trainable_parameters())
    total = sum(p.numel() for p in module.parameters())
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False, gradient_clip_val=1.0,
                         default_root_dir=str(out_dir), num_sanity_val_steps=0,
                         limit_val_batches=0)
    t0 = time.perf_counter()
    trainer.fit(module, _loader(splits["train"], batch_size, True))
    train_s = time.perf_counter() - t0
    test = splits["test"]
    t0 = time.perf_counter()
    probs = predict_probs(module, test)
    predict_s = time.perf_counter() - t0
    labels = np.asarray([t.label for t in test])
    return {"name": name, **binary_metrics(labels, probs), "trainable_params": trainable,
            "total_params": total, "train_s": train_s,
            "predict_s_per_1000": 1000 * predict_s / len(test), "probs": probs.tolist(),
            "labels": labels.tolist(), "module": module,
            "extra": {k: predict_probs(module, v).tolist() for k, v in (extra or {}).items()}}


def run_baseline(kind: str, splits: dict[str, list[Transcript]],
                 extra: dict[str, list[Transcript]] | None = None) -> dict:
    train, test = splits["train"], splits["test"]
    b = Baseline(kind)
    t0 = time.perf_counter()
    b.fit([t.seq for t in train], [t.label for t in train])
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    probs = b.predict_proba([t.seq for t in test])
    predict_s = time.perf_counter() - t0
    labels = np.asarray([t.label for t in test])
    return {"name": b.name, **binary_metrics(labels, probs),
            "trainable_params": b.n_parameters(), "total_params": b.n_parameters(),
            "train_s": train_s, "predict_s_per_1000": 1000 * predict_s / len(test),
            "probs": probs.tolist(), "labels": labels.tolist(),
            "extra": {k: b.predict_proba([t.seq for t in v]).tolist()
                      for k, v in (extra or {}).items()}}


def run_cpc2_row(splits: dict[str, list[Transcript]],
                 extra: dict[str, list[Transcript]] | None = None) -> dict | None:
    """CPC2 with its own shipped model on the test split (nothing trained here), or None
    when its command is not installed."""
    from lorakit.domains.genomics.external import find_cpc2, run_cpc2
    from lorakit.domains.genomics.fasta import Record
    exe = find_cpc2()
    if exe is None:
        return None

    def score(items: list[Transcript]) -> list[float]:
        probs = run_cpc2([Record(t.id, t.seq) for t in items], exe)
        return [probs[t.id] for t in items]

    test = splits["test"]
    t0 = time.perf_counter()
    p = score(test)
    predict_s = time.perf_counter() - t0
    labels = [t.label for t in test]
    return {"name": "CPC2 (shipped model)", **binary_metrics(labels, p),
            "trainable_params": 0, "total_params": 0, "train_s": 0.0,
            "predict_s_per_1000": 1000 * predict_s / len(test),
            "probs": p, "labels": labels,
            "extra": {k: score(v) for k, v in (extra or {}).items()}}
