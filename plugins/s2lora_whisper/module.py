r"""`WhisperAdapterModule`: openai-whisper adapted with S2-LoRA, LoRA, BitFit or full FT.

    audio (B, samples) ─► log-mel (B, 80, 2·n_audio_ctx) ─► encoder ─┐
    <|sot|>… tokens of " text" ───────────────────────────────────► decoder ─► logits
    loss = cross-entropy(logits, next token)                           (teacher forcing)
    after each optimizer step (S2-LoRA): λ ← sign(λ)·max(|λ| − τ, 0), τ = η_λ·l1/(√v̂ + ε)

S2-LoRA (Liu et al., "Sparsely Shared LoRA on Whisper for Child Speech Recognition"):
every adapted matrix of one shape shares A (r × in) and B (out × r); matrix i keeps
only λᵢ (r numbers), ΔWᵢ = B·diag(λᵢ)·A, and an L1 term on λ switches ranks off. The
L1 term is applied as a proximal step (soft-thresholding λ after each optimizer step, in
Adam's metric), which leaves exact zeros: added to the loss instead, its gradient
l1·sign(λ) is rescaled by Adam like any other and λ only jitters around zero.
`adapter.method="lora"` gives each matrix its own A, B (the paper's LoRA baseline), and any
other lorakit method is one `--model.adapter.method` away; `mode="bitfit"` trains only the
biases (BitFit, which the paper also compares); `mode="full"` trains every weight (its full
fine-tuning baseline). Everything else (data, loss, decoding, metrics)
is the same for all, so they compare like for like.

`test` decodes every test set twice, with the frozen base and with the adapted model,
and prints and saves WER/CER for both; `predict` writes transcripts as JSONL.
"""
from __future__ import annotations

import contextlib
import copy
import json
import warnings
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info

from lorakit import LoRAConfig, load_adapter
from lorakit.atomic import atomic_write
from lorakit.compress.quantize import quantize_like
from lorakit.domains.speech.adult_base import embedded_base
from lorakit.domains.speech.metrics import error_rates
from lorakit.domains.speech.pretrained import tiny_en_checkpoint
from lorakit.domains.speech.teacher_forcing import cross_entropy, transcription_tokenizer
from lorakit.domains.speech.whisper_model import (
    SAMPLE_RATE,
    context_samples,
    decoding_budget,
    load_whisper,
    log_mel,
    transcribe,
)
from lorakit.errors import LoraKitError
from lorakit.plugins.adapter_args import NO_GRADIENT_INIT, hparams_dict, plugin_adapter
from lorakit.training.module import AdapterModule
from lorakit.training.proximal import adam_thresholds

TARGETS = ["*.query", "*.key", "*.value", "*.out", "*.mlp.0", "*.mlp.2"]
#: S2-LoRA r=8, alpha 16 on every attention and MLP Linear (Liu et al. 2025's setting)
ADAPTER = LoRAConfig(method="s2lora", rank=8, alpha=16.0, dropout=0.0, targets=list(TARGETS))
Mode = Literal["adapter", "bitfit", "full"]
METHODS = ("s2lora", "lora", "bitfit", "full")   # the values of the deprecated model.method


class WhisperAdapterModule(AdapterModule):
    """Whisper with adapters, trained on (audio, transcript) batches.

    Args:
        checkpoint: an openai-whisper `.pt` (what `whisper.load_model` reads); None for
            the embedded base: tiny.en taught the short context on adult voices
            (`lorakit.domains.speech.adult_base`, built and cached on first use), or
            tiny.en itself when n_audio_ctx is None.
        n_audio_ctx: encoder positions to keep (50 per second); 150 is 3 s. None keeps
            the checkpoint's own context (1500 = 30 s).
        mode: "adapter" (train `adapter`), "bitfit" (the biases only) or "full" (every
            weight); the last two keep a frozen copy as the base.
        adapter: the adapter of mode "adapter": any lorakit method
            (--model.adapter.method lora --model.adapter.rank 16); default S2-LoRA
            (shared A/B, sparse λ) r=8, alpha 16 on every attention and MLP Linear.
        l1: coefficient of the L1 penalty l1·Σ|λ| on S2-LoRA's λ (ignored by the other
            methods), applied as a proximal step in Adam's metric after each optimizer step
            (`lorakit.training.proximal`): ranks whose gradient is small against their λ reach
            exactly zero.
        adapter_file: a lorakit adapter file to start from (its method and rank win).
        language: transcription language for multilingual checkpoints.
        max_tokens: cap on decoded tokens per clip; None: from the context (4 per second of
            encoder context: 12 at 3 s, which keeps a short-context model from looping;
            120 at 30 s, room for several sentences; at most Whisper's own limit).
        output_dir: where the adapter, sparsity.json, test metrics, per-test-set hypotheses
            (hypotheses/<set>.jsonl: reference, base and adapted transcript) and predictions are
            written; None: the run's folder under --trainer.default_root_dir.
        lambda_lr: learning rate of S2-LoRA's λ. λ starts at 1 and Adam moves it by about
            its learning rate a step, so λ needs a larger one than A, B to reach zero
            within a short run.
        lr: learning rate of the adapter (of every trained weight in modes bitfit, full).
        weight_decay: AdamW weight decay (never on S2-LoRA's λ).
        optimizer: "adamw", "adam" or "sgd".
        method: deprecated: "s2lora" / "lora" are adapter.method, "bitfit" / "full" are mode.
        rank: deprecated, use adapter.rank.
        alpha: deprecated, use adapter.alpha.
        dropout: deprecated, use adapter.dropout.
        targets: deprecated, use adapter.targets.
    """

    def __init__(self, checkpoint: str | None = None, n_audio_ctx: int | None = 150,
                 mode: Mode = "adapter", adapter: LoRAConfig = ADAPTER, l1: float = 1e-3,
                 adapter_file: str | None = None, language: str = "en",
                 max_tokens: int | None = None, output_dir: str | None = None, lr: float = 2e-3,
                 lambda_lr: float = 2e-2, weight_decay: float = 0.0,
                 optimizer: str = "adamw", method: str | None = None, rank: int | None = None,
                 alpha: float | None = None, dropout: float | None = None,
                 targets: list[str] | None = None) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                         output_dir=output_dir)
        if method is not None and method not in METHODS:
            raise LoraKitError(f"model.method must be one of {', '.join(map(repr, METHODS))}, "
                               f"got {method!r} (and it is deprecated: the adapter's method "
                               "is model.adapter.method, bitfit and full are model.mode)")
        if mode not in Mode.__args__:
            raise LoraKitError(f"model.mode must be one of {Mode.__args__}, got {mode!r}")
        if method in ("bitfit", "full"):
            warnings.warn(f"s2lora-whisper: model.method {method} is deprecated; use "
                          f"model.mode {method} (--model.mode {method})", DeprecationWarning,
                          stacklevel=2)
            mode, method = method, None
        adapter = plugin_adapter("s2lora-whisper", adapter, refuse=NO_GRADIENT_INIT, deprecated={
            "method": ("method", method), "rank": ("rank", rank), "alpha": ("alpha", alpha),
            "dropout": ("dropout", dropout), "targets": ("targets", targets)})
        # the deprecated flat keys live on in `mode` and `adapter`
        self.save_hyperparameters(ignore=["method", "rank", "alpha", "dropout", "targets"])
        self.hparams.mode, self.hparams.adapter = mode, hparams_dict(adapter)
        if checkpoint is None:
            checkpoint = embedded_base(n_audio_ctx) if n_audio_ctx else tiny_en_checkpoint()
        self.checkpoint = str(checkpoint)
        self.model = load_whisper(self.checkpoint, n_audio_ctx)
        self.n_audio_ctx = self.model.dims.n_audio_ctx
        self.mode, self.l1, self.lambda_lr, self.language = mode, l1, lambda_lr, language
        self.max_tokens = max_tokens or decoding_budget(self.n_audio_ctx,
                                                        self.model.dims.n_text_ctx)
        self.tokenizer = transcription_tokenizer(self.model, language)
        self.config = adapter
        self._reference: list = []   # full fine-tuning's frozen base, kept out of state_dict
        if adapter_file:
            quantize_like(self.model, adapter_file)    # a QLoRA file: its base as it was
            self.adapters = load_adapter(self.model, adapter_file)
        else:
            self.adapt(self.model)
        self.model.train()   # Lightning keeps the modes modules come with
        self._outputs: dict[str, dict[str, list[str]]] = {}
        self._predictions: list[dict] = []

    # --- what is trained ------------------------------------------------------------
    def adapt(self, model) -> None:
        """Attach adapters, or unfreeze every weight (full fine-tuning) or every bias of the
        adapted layers (BitFit) and keep a frozen copy as the base."""
        if self.mode in ("full", "bitfit"):
            self._reference.append(copy.deepcopy(model).requires_grad_(False))
            if self.mode == "full":
                model.requires_grad_(True)
            else:
                for name, p in model.named_parameters():
                    p.requires_grad_(name.endswith(".bias"))
        else:
            self.attach_adapters(model, self.config)

    def regularizer(self) -> torch.Tensor:
        """Added to the loss; zero here (S2-LoRA's L1 is a proximal step, `shrink_lambda`)."""
        return torch.zeros((), device=self.device)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.shrink_lambda()

    def shrink_lambda(self) -> None:
        """S2-LoRA's proximal L1 step, after the optimizer step, in Adam's metric
        (`lorakit.training.proximal`): λ moves lr·l1/(√v̂ + ε) towards zero and stops at zero."""
        if self.adapters is None or self.adapters.config.method != "s2lora" or not self.l1:
            return
        self.adapters.shrink(adam_thresholds(self.trainer.optimizers[0], self.l1))

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        for group in groups:
            if group["name"] == "lambda":
                group["lr"] = self.lambda_lr
        return groups

    @contextlib.contextmanager
    def base_model(self):
        """The frozen base model inside the block (adapters off, or the kept copy)."""
        if self._reference:
            self._reference[0].to(self.device)
            yield self._reference[0]
        elif self.adapters is not None:
            with self.adapters.disabled():
                yield self.model
        else:
            yield self.model

    # --- inputs -----------------------------------------------------------------------
    @property
    def clip_seconds(self) -> float:
        """Longest clip the encoder context holds."""
        return context_samples(self.n_audio_ctx) / SAMPLE_RATE

    def mel(self, audio: torch.Tensor) -> torch.Tensor:
        return log_mel(audio, self.n_audio_ctx, self.model.dims.n_mels)

    # --- training -----------------------------------------------------------------------
    def cross_entropy(self, batch: dict) -> torch.Tensor:
        return cross_entropy(self.model, self.tokenizer, batch["audio"], batch["text"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        ce = self.cross_entropy(batch)
        reg = self.regularizer()
        loss = ce + reg
        self.log_dict({"train/loss": loss, "train/ce": ce, "train/reg": reg}, prog_bar=True,
                      batch_size=len(batch["text"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        hyps = transcribe(self.model, self.mel(batch["audio"]), self.max_tokens, self.language)
        rates = error_rates(batch["text"], hyps)
        n = len(batch["text"])
        self.log_dict({"val/ce": self.cross_entropy(batch), "val/wer": rates["wer"],
                       "val/cer": rates["cer"]}, prog_bar=True, batch_size=n)

    # --- test: base and adapted, per test set --------------------------------------------
    def on_test_epoch_start(self) -> None:
        self._outputs = {}

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        mel = self.mel(batch["audio"])
        out = self._outputs.setdefault(batch["set"][0], {"ref": [], "base": [], "adapted": [],
                                                          "audio": []})
        with self.base_model() as base:
            out["base"] += transcribe(base, mel, self.max_tokens, self.language)
        out["adapted"] += transcribe(self.model, mel, self.max_tokens, self.language)
        out["ref"] += batch["text"]
        out["audio"] += batch.get("path", [None] * len(batch["text"]))

    def on_test_epoch_end(self) -> None:
        metrics = {}
        for name, out in self._outputs.items():
            base, adapted = error_rates(out["ref"], out["base"]), error_rates(out["ref"],
                                                                             out["adapted"])
            metrics[name] = {"n": base["n"], "base_wer": base["wer"], "base_cer": base["cer"],
                             "wer": adapted["wer"], "cer": adapted["cer"]}
        if self.logger is not None:
            self.logger.log_metrics({f"test/{name}/{k}": v for name, m in metrics.items()
                                     for k, v in m.items()}, step=self.global_step)
        lines = [f"{'test set':<16}{'n':>5}{'base WER':>10}{'WER':>8}{'base CER':>10}{'CER':>8}"]
        lines += [f"{k:<16}{m['n']:>5}{m['base_wer']:>10.3f}{m['wer']:>8.3f}"
                  f"{m['base_cer']:>10.3f}{m['cer']:>8.3f}" for k, m in metrics.items()]
        rank_zero_info("\n".join(lines))
        self.write_json("test_metrics.json", metrics)
        for name, out in self._outputs.items():
            self.write_hypotheses(name, out)
        self.test_metrics = metrics

    def write_hypotheses(self, test_set: str, out: dict) -> Path:
        """`hypotheses/<test set>.jsonl`: per utterance its audio file, the reference, and
        the base's and the adapted model's transcripts, so errors can be read."""
        rows = [{"audio": audio, "reference": ref, "base": base, "adapted": adapted}
                for audio, ref, base, adapted in zip(out["audio"], out["ref"], out["base"],
                                                     out["adapted"])]
        path = self.output_folder() / "hypotheses" / f"{test_set}.jsonl"

        def write(tmp):
            with open(tmp, "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
        return atomic_write(path, write)

    # --- predict -------------------------------------------------------------------------
    def on_predict_epoch_start(self) -> None:
        self._predictions = []

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        hyps = transcribe(self.model, self.mel(batch["audio"]), self.max_tokens, self.language)
        rows = [{"audio": path, "text": hyp} for path, hyp in zip(batch["path"], hyps)]
        self._predictions += rows
        return rows

    def on_predict_epoch_end(self) -> None:
        path = self.output_folder() / "predictions.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in self._predictions)
        rank_zero_info(f"lorakit: {len(self._predictions)} transcripts written to {path}")

    # --- files ---------------------------------------------------------------------------
    def write_json(self, name: str, data, folder: Path | None = None) -> Path:
        path = (folder or self.output_folder()) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))
        return path

    def adapter_metadata(self) -> dict:
        return {"base_checkpoint": Path(self.checkpoint).name, "n_audio_ctx": self.n_audio_ctx,
                "steps": int(self.global_step)}

    def on_adapter_saved(self, path: Path) -> None:
        """λ's sparsity beside the adapter file."""
        self.write_json("sparsity.json", self.adapters.sparsity_report(), path.parent)
