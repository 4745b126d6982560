"""`LoRABertModule`: LoRA-BERT's training loop (lncRNA vs mRNA from k-mer tokens).

    transcript ── k-mers ── windows of max_tokens ── BERT + LoRA(query, value)
        ── token states of all its windows ── [mean ; max ; log length]
        ── classifier (LayerNorm, dropout, Linear-GELU-Linear; trained in full)
        ── logits
        ── softmax ── coding probability

LoRA on the attention query and value projections (Hu et al. 2021, sec. 7.1: W_q and
W_v together work best at a fixed budget), the classification head trained in full
through `LoRAConfig(modules_to_save=[...])`, everything else frozen. `mode` gives the
comparison rows of the benchmark: "full" fine-tuning of every weight, "head" (frozen
encoder, trained head).

Long transcripts (lncRNAs reach 10 kb and more, a window of the embedded base ~0.77 kb)
are handled by `long_mode`: "windows" covers every nucleotide with consecutive windows
and pools them (`pooling`: "tokens" pools token states over all windows, "mean"/"max"
pool the logits each window gets on its own); "head_tail" keeps the first and last
max_tokens/2 k-mers (Sun et al. 2019, sec. 5.3.1). Training pools at most
`max_train_windows` windows per transcript (an evenly spaced subset when there are
more); validation, test and predict use them all.

A tokenizer with several reading frames (codon tokens, k=3 stride 3, `frames` 3: see
lorakit.domains.genomics.kmer) reads every window in each frame, and the pooling runs
over all windows of all frames, so the max half of the feature can come from
whichever frame holds the coding sequence; the mean half is taken per frame, then the
largest per-frame mean kept (codon usage is a property of the coding frame, and the
other two frames would average it away). In training the subset is taken along the
transcript and keeps every frame of a kept window.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lorakit import load_adapter, read_adapter
from lorakit.compress.quantize import quantize_like
from lorakit.config import LoRAConfig
from lorakit.domains.genomics.features import longest_orf
from lorakit.domains.genomics.kmer import Window
from lorakit.domains.genomics.kmer_bert import load_classifier, load_tokenizer
from lorakit.domains.genomics.metrics import binary_metrics
from lorakit.errors import LoraKitError
from lorakit.plugins.adapter_args import NO_GRADIENT_INIT, hparams_dict, plugin_adapter
from lorakit.training.module import AdapterModule

from .predict_tsv import PredictionRow, write_predictions

ASSETS = Path(__file__).with_name("assets")
BASE_DIR = ASSETS / "base"
# the 2-layer, 256-codon base BASE_DIR was grown from: a quarter of the fit time, and the
# better of the two on a few hundred transcripts (the demo's size)
COMPACT_DIR = ASSETS / "base_compact"
Mode = Literal["lora", "full", "head"]
LongMode = Literal["windows", "head_tail"]
Pooling = Literal["tokens", "mean", "max"]
HEAD = ["classifier"]
# LoRA on W_q and W_v (Hu et al. 2021, sec. 7.1), the head trained in full
ADAPTER = LoRAConfig(rank=8, alpha=16.0, dropout=0.0, targets=["*.query", "*.value"],
                     modules_to_save=HEAD)


class LoRABertModule(AdapterModule):
    """LoRA-BERT: a k-mer BERT fine-tuned with LoRA to tell mRNAs from lncRNAs.

    Args:
        pretrained: a transformers BERT folder over k-mer tokens (config.json,
            model.safetensors, vocab.txt); None: the embedded base
            (plugins/lorabert/assets/base).
        stride: k-mer stride of the tokenizer; None reads kmer_tokenizer.json in the folder
            (1, DNABERT's overlapping layout, when absent).
        frames: reading frames the tokenizer reads (1..stride); None reads
            kmer_tokenizer.json (1 when absent).
        mode: "lora" (the adapter on adapter.targets + trained head), "full" (every
            weight), "head" (frozen encoder, trained head).
        adapter: the adapter of mode "lora" (any lorakit method:
            --model.adapter.method dora --model.adapter.rank 16); default LoRA r=8,
            alpha 16 on the query and value projections. The classification head is
            always in its modules_to_save (trained in full, saved with the adapter).
            --model.adapter.base_quantization nf4 trains it on an NF4 base (QLoRA).
        long_mode: "windows" (cover the whole transcript, pool) or "head_tail".
        max_tokens: k-mers per window; None: the model's position limit minus 2.
        window_overlap: k-mers shared by consecutive windows.
        pooling: "tokens": one head over [mean ; max] of the token states of all windows;
            "mean" / "max": the head on each window, then the mean of the logits or the
            window with the largest coding margin.
        max_train_windows: windows per transcript in training steps (each with all its
            reading frames).
        window_batch: windows per forward pass in evaluation and prediction.
        threshold: coding probability at and above which a transcript is called coding.
        head_hidden: units of the classification head's hidden layer (GELU); 0: a linear
            head on the pooled features.
        predictions: TSV written by `predict` (CPC2-like columns).
        adapter_file: a lorakit adapter file (written at the end of `fit` as
            adapter.safetensors in the output folder) to start from or predict with;
            its head_hidden (in the file's metadata) overrides model.head_hidden.
        output_dir: where fit writes adapter.safetensors; None: the run's folder under
            --trainer.default_root_dir.
        lr: learning rate of the adapter and the head.
        weight_decay: AdamW weight decay.
        optimizer: "adamw", "adam" or "sgd".
        rank: deprecated, use adapter.rank.
        alpha: deprecated, use adapter.alpha.
        lora_dropout: deprecated, use adapter.dropout.
        targets: deprecated, use adapter.targets.
    """

    def __init__(self, pretrained: str | None = None, stride: int | None = None,
                 frames: int | None = None, mode: Mode = "lora",
                 adapter: LoRAConfig = ADAPTER, long_mode: LongMode = "windows",
                 max_tokens: int | None = None,
                 window_overlap: int = 0, pooling: Pooling = "tokens",
                 max_train_windows: int = 4, window_batch: int = 64, threshold: float = 0.5,
                 head_hidden: int = 32,
                 predictions: str = "predictions.tsv", adapter_file: str | None = None,
                 output_dir: str | None = None, lr: float = 2e-3,
                 weight_decay: float = 0.01, optimizer: str = "adamw",
                 rank: int | None = None, alpha: float | None = None,
                 lora_dropout: float | None = None,
                 targets: list[str] | None = None) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                         output_dir=output_dir)
        adapter = plugin_adapter("lorabert", adapter, refuse=NO_GRADIENT_INIT, deprecated={
            "rank": ("rank", rank), "alpha": ("alpha", alpha),
            "lora_dropout": ("dropout", lora_dropout), "targets": ("targets", targets)})
        if missing := [m for m in HEAD if m not in adapter.modules_to_save]:
            adapter.modules_to_save += missing
        # where files go is a choice of each run, not a property of the trained model; the
        # deprecated flat keys live on in `adapter`
        self.save_hyperparameters(ignore=["predictions", "output_dir", "rank", "alpha",
                                          "lora_dropout", "targets"])
        self.hparams.adapter = hparams_dict(adapter)
        for name, value, allowed in (("mode", mode, Mode), ("long_mode", long_mode, LongMode),
                                     ("pooling", pooling, Pooling)):
            if value not in allowed.__args__:
                raise LoraKitError(f"model.{name} must be one of {allowed.__args__}, "
                                   f"got {value!r}")
        folder = Path(pretrained) if pretrained else BASE_DIR
        self.tokenizer = load_tokenizer(folder, stride=stride, frames=frames)
        if head_hidden < 0:
            raise LoraKitError(f"model.head_hidden must be >= 0, got {head_hidden}")
        if adapter_file:  # the head's shape is the adapter's: it holds the trained head
            made = read_adapter(adapter_file)[0].get("extra", {}).get("head_hidden")
            if made is not None and int(made) != head_hidden:
                rank_zero_info(f"lorabert: {adapter_file} holds a head with {made} hidden "
                               f"units; using model.head_hidden {made}")
                head_hidden = int(made)
                self.hparams.head_hidden = head_hidden
        self.model = load_classifier(folder, num_labels=2, head_hidden=head_hidden)
        limit = self.model.config.max_position_embeddings - 2
        self.max_tokens = min(max_tokens or limit, limit)
        if max_tokens and max_tokens > limit:
            rank_zero_warn(f"max_tokens {max_tokens} exceeds the model's {limit} positions; "
                           f"using {limit}")
        self.mode, self.long_mode, self.pooling = mode, long_mode, pooling
        self.window_overlap = window_overlap
        self.max_train_windows, self.window_batch = max_train_windows, window_batch
        self.threshold = threshold
        self.predictions = predictions
        if adapter.base_quantization and mode != "lora":
            raise LoraKitError(f"model.adapter.base_quantization needs model.mode 'lora' (mode "
                               f"{mode!r} trains no adapter on a frozen base)")
        if adapter_file:
            if mode != "lora":
                raise LoraKitError("model.adapter_file needs model.mode 'lora'")
            quantize_like(self.model, adapter_file)    # a QLoRA file: its base as it was
            self.adapters = load_adapter(self.model, adapter_file)
        elif mode == "lora":
            self.attach_adapters(self.model, adapter)
        elif mode == "head":
            self.model.requires_grad_(False)
            for name in HEAD:
                self.model.get_submodule(name).requires_grad_(True)
        else:
            self.model.requires_grad_(True)
        self._outputs: dict[str, list] = {}

    # --- transcripts to windows -----------------------------------------------------
    def windows_of(self, seq: str) -> list[Window]:
        """The transcript's windows: window-major, every reading frame of each window."""
        tok = self.tokenizer
        if self.long_mode == "head_tail":
            return tok.frame_head_tail(seq, self.max_tokens)
        return tok.frame_windows(seq, self.max_tokens, self.window_overlap)

    def _train_subset(self, wins: list[Window]) -> list[Window]:
        """At most `max_train_windows` evenly spaced windows (from a random offset), each
        with all its frames."""
        n = self.windows_along(wins)
        if n <= self.max_train_windows:
            return wins
        offset = int(torch.randint(0, n, (1,)))
        keep = np.linspace(0, n, self.max_train_windows, endpoint=False).astype(int)
        groups = {int((i + offset) % n) for i in keep}
        return [w for w in wins if w.group in groups]

    def _window_states(self, wins: list[Window]):
        width = max(len(w.ids) for w in wins)
        ids = torch.full((len(wins), width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(wins), width), dtype=torch.long)
        for r, w in enumerate(wins):
            ids[r, :len(w.ids)] = torch.tensor(w.ids)
            mask[r, :len(w.ids)] = 1
        return self.model.window_states(ids.to(self.device), mask.to(self.device))

    def pool(self, total: torch.Tensor, peak: torch.Tensor, count: torch.Tensor,
             n_kmers: int, frames: torch.Tensor | None = None) -> torch.Tensor:
        """One transcript's (2,) logits from the states of its W windows (`frames`: each
        window's reading frame, when the tokenizer reads more than one)."""
        pool_windows = self.model.pool_windows
        if self.pooling == "tokens":
            return self.model.head(pool_windows(total, peak, count, n_kmers, frames))
        per_window = torch.stack([
            self.model.head(pool_windows(total[i:i + 1], peak[i:i + 1], count[i:i + 1], n_kmers))
            for i in range(len(total))])
        if self.pooling == "mean":
            return per_window.mean(0)
        return per_window[(per_window[:, 1] - per_window[:, 0]).argmax()]

    def n_kmers(self, seq: str) -> int:
        return len(self.tokenizer.kmers(seq))

    @staticmethod
    def windows_along(wins: list[Window]) -> int:
        """How many windows cut the transcript (each is read once per reading frame)."""
        return max(w.group for w in wins) + 1

    def forward(self, seqs: list[str], train: bool = False) -> tuple[torch.Tensor, list[int]]:
        """(transcript logits (B, 2), windows along each transcript)."""
        per = [self.windows_of(s) for s in seqs]
        n_windows = [self.windows_along(ws) for ws in per]
        if train:
            per = [self._train_subset(w) for w in per]
        flat = [w for ws in per for w in ws]
        chunks = [self._window_states(flat[a:a + self.window_batch])
                  for a in range(0, len(flat), self.window_batch)]
        total, peak, count = (torch.cat([c[i] for c in chunks]) for i in range(3))
        out, a = [], 0
        for seq, ws in zip(seqs, per):
            b = a + len(ws)
            frames = (torch.tensor([w.frame for w in ws], device=total.device)
                      if self.tokenizer.frames > 1 else None)
            out.append(self.pool(total[a:b], peak[a:b], count[a:b], self.n_kmers(seq),
                                 frames))
            a = b
        return torch.stack(out), n_windows

    # --- the loop ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Report (never drop) transcripts shorter than k: they have no k-mer to read."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer else None
        splits = getattr(dm, "splits", None) or {}
        short = [t.id for items in splits.values() for t in items
                 if len(t.seq) < self.tokenizer.k]
        if short:
            rank_zero_warn(f"{len(short)} transcript(s) shorter than k={self.tokenizer.k} are "
                           f"kept as one [UNK] token: {', '.join(short[:5])}"
                           + (" ..." if len(short) > 5 else ""))

    def training_step(self, batch, batch_idx):
        labels = torch.tensor([t.label for t in batch], device=self.device)
        logits, _ = self([t.seq for t in batch], train=True)
        loss = nn.functional.cross_entropy(logits, labels)
        acc = (logits.argmax(-1) == labels).float().mean()
        self.log_dict({"train/loss": loss, "train/acc": acc}, prog_bar=True,
                      batch_size=len(batch))
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        labels = torch.tensor([t.label for t in batch], device=self.device)
        logits, _ = self([t.seq for t in batch])
        loss = nn.functional.cross_entropy(logits, labels)
        self.log(f"{stage}/loss", loss, batch_size=len(batch), prog_bar=stage == "val")
        out = self._outputs.setdefault(stage, [])
        out.append((labels.cpu(), logits.softmax(-1)[:, 1].float().cpu()))

    def _eval_end(self, stage: str) -> dict[str, float]:
        out = self._outputs.pop(stage, [])
        if not out:
            return {}
        labels = torch.cat([o[0] for o in out]).numpy()
        probs = torch.cat([o[1] for o in out]).numpy()
        metrics = binary_metrics(labels, probs, self.threshold)
        self.log_dict({f"{stage}/{k}": float(v) for k, v in metrics.items()},
                      prog_bar=stage == "val")
        return metrics

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        self._eval_end("val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._eval_end("test")

    def adapter_metadata(self) -> dict:
        return {"plugin": "lorabert", "step": int(self.global_step),
                "long_mode": self.long_mode, "pooling": self.pooling,
                "max_tokens": self.max_tokens, "head_hidden": self.hparams.head_hidden}

    # --- prediction -----------------------------------------------------------------
    def predict_step(self, batch, batch_idx):
        logits, n_windows = self([t.seq for t in batch])
        probs = logits.softmax(-1)[:, 1].float().cpu().tolist()
        rows = []
        for t, p, n in zip(batch, probs, n_windows):
            orf = longest_orf(t.seq)
            covered = (len(t.seq) if self.long_mode == "windows"
                       else min(len(t.seq), self._head_tail_span()))
            rows.append(PredictionRow(t.id, len(t.seq), orf.length if orf else 0, p,
                                      p >= self.threshold, n, covered / len(t.seq)))
        self._outputs.setdefault("predict", []).extend(rows)
        return rows

    def _head_tail_span(self) -> int:
        k, s = self.tokenizer.k, self.tokenizer.stride
        return (self.max_tokens - 1) * s + k

    def on_predict_epoch_start(self):
        self._outputs["predict"] = []

    def on_predict_epoch_end(self):
        rows = self._outputs.pop("predict", [])
        short = [r.id for r in rows if r.length < self.tokenizer.k]
        if short:
            rank_zero_warn(f"{len(short)} transcript(s) shorter than k={self.tokenizer.k} "
                           f"have no k-mer; their probability is the model's guess for an "
                           f"empty input: {', '.join(short[:5])}"
                           + (" ..." if len(short) > 5 else ""))
        if self.trainer.is_global_zero and self.predictions:
            path = write_predictions(rows, self.predictions)
            rank_zero_info(f"lorabert: wrote {len(rows)} predictions to {path} "
                           f"(long_mode={self.long_mode}, {self.max_tokens} k-mers a window)")
