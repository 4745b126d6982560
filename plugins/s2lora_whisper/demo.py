"""`lorakit s2lora-whisper demo`: the embedded default end to end, and a report.

Fine-tunes the embedded base (Whisper tiny.en taught the 3 s context on adult voices)
with S2-LoRA on the synthetic child voices,
with the settings of `default.yaml`, then writes into `out_dir`:

    report.md / report.json   WER and CER before and after on child_test, child_ood and
                              adult_test; trainable parameters; sparsity of λ
    loss_curve.png            training loss (cross-entropy + L1) per step
    lambda_heatmap.png        |λ| of every adapted matrix (rows) and rank (columns)
    adapter.safetensors       the adapter itself
"""
from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import matplotlib
import torch
import yaml

from .data import SpeechDataModule
from .module import WhisperAdapterModule

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONFIG = Path(__file__).with_name("default.yaml")
SPARSITY_TOL = 0.05  # |λ| below 5% of its starting value counts as switched off


class LossHistory(pl.Callback):
    """Training loss of every step, for the loss curve."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float, float]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = float(outputs["loss"])
        self.steps.append((trainer.global_step, loss, module.regularizer().item()))


def plot_loss(history: LossHistory, path: Path) -> None:
    steps, loss, reg = zip(*history.steps)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, label="loss (cross-entropy + L1)")
    ax.plot(steps, [a - b for a, b in zip(loss, reg)], label="cross-entropy", alpha=0.7)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("S2-LoRA on Whisper tiny.en, synthetic child speech")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lambda(adapters, path: Path) -> None:
    variants = adapters.variants()
    names = list(variants)
    lam = torch.stack([variants[n].lora_lambda.detach().abs().cpu() for n in names])
    fig, ax = plt.subplots(figsize=(4 + 0.3 * lam.shape[1], 0.16 * len(names) + 1.2))
    image = ax.imshow(lam.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(names)), [n.replace("blocks.", "") for n in names], fontsize=6)
    ax.set_xticks(range(lam.shape[1]))
    ax.set_xlabel("rank")
    ax.set_title("|λ| per adapted matrix")
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def lora_count(adapters, rank: int) -> int:
    """Trainable parameters plain LoRA of the same rank would have on the same matrices."""
    return sum(rank * (m.in_features + m.out_features) for m in adapters.layers.values())


def demo(out_dir: Path, threads: int = 2) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    config = yaml.safe_load(CONFIG.read_text())
    pl.seed_everything(config["seed_everything"], verbose=False)
    module = WhisperAdapterModule(**config["model"], output_dir=str(out_dir))
    data = SpeechDataModule(**config["data"])
    history = LossHistory()
    trainer = pl.Trainer(**config["trainer"], default_root_dir=str(out_dir), logger=False,
                         enable_checkpointing=False, callbacks=[history])
    trainer.fit(module, data)
    trainer.test(module, data, verbose=False)

    adapters = module.adapters
    plot_loss(history, out_dir / "loss_curve.png")
    plot_lambda(adapters, out_dir / "lambda_heatmap.png")
    report = adapters.sparsity_report(SPARSITY_TOL)
    sparsity = sum(r["rank"] - r["active"] for r in report) / sum(r["rank"] for r in report)
    figures = {
        "trainable_params": adapters.trainable_count(),
        "lora_r8_params": lora_count(adapters, module.config.rank),
        "total_params": adapters.total_count(),
        "lambda_sparsity": sparsity,
        "adapter_kb": (out_dir / "adapter.safetensors").stat().st_size / 1024,
        "steps": trainer.global_step,
    }
    for name, m in module.test_metrics.items():
        for key in ("base_wer", "wer", "base_cer", "cer"):
            figures[f"{name}_{key}"] = m[key]
    (out_dir / "report.json").write_text(json.dumps(figures, indent=2))
    (out_dir / "report.md").write_text(render(module.test_metrics, figures))
    return figures


def render(metrics: dict, f: dict) -> str:
    rows = "\n".join(f"| {name} | {m['n']} | {m['base_wer']:.3f} | {m['wer']:.3f} | "
                     f"{m['base_cer']:.3f} | {m['cer']:.3f} |" for name, m in metrics.items())
    return f"""# S2-LoRA on Whisper tiny.en: synthetic child speech

{f['steps']} steps of S2-LoRA (rank 8, shared A/B per shape, L1 on λ) on child_train.
Base: Whisper tiny.en at a 3 s encoder context, taught that context on adult voices
(lorakit.plugins.s2lora_whisper.base), greedy decoding capped at the config's
max_tokens. WER/CER after Whisper's English text normaliser; adult_test shows what
adapting to children costs on adults.

| test set | clips | WER before | WER after | CER before | CER after |
|---|---|---|---|---|---|
{rows}

- trainable parameters: {f['trainable_params']:,} of {f['total_params']:,}
  ({100 * f['trainable_params'] / f['total_params']:.3f}%); plain LoRA r=8 on the same
  matrices: {f['lora_r8_params']:,} ({100 * f['trainable_params'] / f['lora_r8_params']:.1f}% of it)
- λ sparsity (|λ| < {SPARSITY_TOL}): {100 * f['lambda_sparsity']:.1f}% of ranks switched off
- adapter file: {f['adapter_kb']:.1f} KB

![loss](loss_curve.png)
![lambda](lambda_heatmap.png)
"""
