"""A sentence classifier trained the way a lorakit user trains one: a LightningModule that
subclasses `AdapterModule`, fitted by `lightning.Trainer.fit`.

    tokens ─► encoder (frozen, adapters on query/value; or every weight for full FT)
           ─► mean over the non-padding tokens (sentence-transformers pooling)
           ─► head: Linear(hidden → labels), always trained, kept outside the adapters

The head lives beside the encoder, not inside it, so `attach` freezes the encoder only and
the head trains in every row; BA-LoRA's base outputs are this model's logits with the
adapters off (`output_regularisers`). ALLoRA's gradient scaling and LoRA-GGPO's perturbed
second pass come from `AdapterModule` itself, with nothing here.

`encode` tokenises (text, label) pairs once; `loader` pads each batch to its own longest
sequence (eval loaders sort by length first, so little padding is computed).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lorakit.config import LoRAConfig
from lorakit.training.module import AdapterModule


class RecordingModule(AdapterModule):
    """An `AdapterModule` that records, for a suite, its validation curve `val_curve`
    ([(step, loss, accuracy)], one entry per validation run) and the wall time of every
    training step `step_times` (forward, backward(s) and optimizer step).

    A subclass gives `evaluate(batch) -> (mean loss, correct, count)`."""

    def __init__(self, lr: float, output_dir: str | None) -> None:
        super().__init__(lr=lr, output_dir=output_dir)
        self.val_curve: list[tuple[int, float, float]] = []
        self.step_times: list[float] = []
        self._val_sums = [0.0, 0, 0]
        self._t0 = 0.0

    def evaluate(self, batch: dict) -> tuple[torch.Tensor, int, int]:
        raise NotImplementedError

    # --- validation curve ------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_sums = [0.0, 0, 0]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, correct, n = self.evaluate(batch)
        self._val_sums[0] += loss.item() * n
        self._val_sums[1] += correct
        self._val_sums[2] += n

    def on_validation_epoch_end(self) -> None:
        loss, correct, n = self._val_sums
        if n:
            self.val_curve.append((self.global_step, loss / n, correct / n))

    # --- step time -------------------------------------------------------------------
    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.step_times.append(time.perf_counter() - self._t0)


class SentenceClassifier(RecordingModule):
    """Mean-pooled encoder + linear head; `config` None trains every encoder weight."""

    def __init__(self, encoder: nn.Module, config: LoRAConfig | None, num_labels: int = 2,
                 lr: float = 1e-3, output_dir: str | None = None) -> None:
        super().__init__(lr=lr, output_dir=output_dir)
        self.encoder = encoder
        if config is None:
            encoder.requires_grad_(True)
        else:
            self.attach_adapters(encoder, config)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def embed(self, batch: dict) -> torch.Tensor:
        """The encoder's sentence embeddings: the mean over the non-padding tokens."""
        mask = batch["attention_mask"]
        hidden = self.encoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head(self.embed(batch))

    def loss(self, batch: dict) -> torch.Tensor:
        return F.cross_entropy(self(batch), batch["labels"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        self.output_regularisers(logits, lambda: self(batch))   # AdapterModule adds them
        return F.cross_entropy(logits, batch["labels"])

    def evaluate(self, batch: dict) -> tuple[torch.Tensor, int, int]:
        logits = self(batch)
        correct = int((logits.argmax(-1) == batch["labels"]).sum())
        return F.cross_entropy(logits, batch["labels"]), correct, len(batch["labels"])


def encode(tokenizer, examples: list[tuple[str, int]], max_length: int) -> list[dict]:
    """Each (text, label) as {"input_ids": LongTensor, "labels": int}, cut at max_length."""
    ids = tokenizer([t for t, _ in examples], truncation=True, max_length=max_length)["input_ids"]
    return [{"input_ids": torch.tensor(i), "labels": y} for i, (_, y) in zip(ids, examples)]


def collate(items: list[dict], pad_id: int = 0) -> dict:
    longest = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), longest), dtype=torch.long)
    for row, it in enumerate(items):
        ids[row, :len(it["input_ids"])] = it["input_ids"]
        mask[row, :len(it["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.tensor([it["labels"] for it in items])}


def loader(items: list[dict], batch_size: int, seed: int | None = None) -> DataLoader:
    """Shuffled by `seed` for training; seed None: in length order, for evaluation."""
    if seed is None:
        items = sorted(items, key=lambda it: len(it["input_ids"]))
        return DataLoader(items, batch_size=batch_size, collate_fn=collate)
    return DataLoader(items, batch_size=batch_size, shuffle=True, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed), drop_last=True)


def fit_recorded(module: RecordingModule, train: DataLoader, val: DataLoader, steps: int,
                 val_every: int, run_dir, callbacks=()) -> RecordingModule:
    """`Trainer.fit` for `steps` steps, validating every `val_every` and at the last step;
    `callbacks`: Lightning callbacks of the run (a pruning schedule)."""
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        max_steps=steps, val_check_interval=val_every, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, accelerator="cpu",
        devices=1, default_root_dir=str(run_dir), callbacks=list(callbacks))
    trainer.fit(module, train, val)
    if not module.val_curve or module.val_curve[-1][0] != module.global_step:
        trainer.validate(module, val, verbose=False)
    return module


@torch.no_grad()
def accuracy(module: RecordingModule, items_loader: DataLoader) -> float:
    """Share of correctly classified items, the module in eval mode."""
    module.eval()
    correct = total = 0
    for batch in items_loader:
        _, right, n = module.evaluate(batch)
        correct += right
        total += n
    return correct / max(total, 1)
