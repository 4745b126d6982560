"""`lorakit lora-distill demo`: distil the embedded digits teacher and report.

1. Fit `DistillModule` on the digits for `steps` steps (Lightning, rich progress bar);
   the adapter and its diffusers export are written to out_dir.
2. Loss curve (PNG).
3. Quality table for several w: class accuracy and Fréchet distance of teacher-CFG
   and student samples from the same noise; sample grids (PNG).
4. Sampling time per image: teacher two passes vs one fused student pass, at batch 1
   and batched.
5. Peak memory of training (this process), and the parameter-state accounting of
   LoRA distillation (one shared model) vs full distillation (teacher copy + student
   + gradients + AdamW moments).
"""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

from lorakit.reports.demo import Headline, write_demo_report

from .evaluate import quality_rows, quality_table, sampling_times, timing_rows

GUIDANCE = (1.0, 1.5, 2.0, 2.5, 3.0)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def loss_plot(history: list[tuple[int, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s, _ in history]
    losses = [v for _, v in history]
    k = max(1, len(losses) // 50)
    smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1])
              for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, alpha=0.3, label="per step")
    ax.plot(steps, smooth, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE to teacher CFG target")
    ax.set_title("lora-distill: digits teacher, w ~ U[1, 3]")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def state_accounting(module) -> dict:
    """Bytes of weights + grads + AdamW moments: LoRA distillation vs full distillation."""
    total = sum(p.numel() for p in module.model.unet.parameters())
    trainable = sum(p.numel() for p in module.adapters.parameters())
    lora = 4 * (total + 3 * trainable)  # frozen shared weights + (weight, grad, m, v) of adapters
    full = 4 * (total + 4 * total)      # frozen teacher copy + student (weight, grad, m, v)
    return {"params_total": total, "params_trainable": trainable,
            "state_mb_lora": lora / 2**20, "state_mb_full": full / 2**20,
            "state_ratio": lora / full}


def demo(out_dir: Path, threads: int = 2, steps: int = 400, per_class: int = 20,
         sample_steps: int = 25) -> dict:
    """Distil, evaluate, write results.json / report.md / report.html / PNGs; returns the
    flat figures."""
    import lightning.pytorch as pl

    from .data import ConditioningDataModule
    from .module import DistillModule

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    pl.seed_everything(0, workers=True)
    module = DistillModule(output_dir=str(out_dir), sample_steps=sample_steps)
    data = ConditioningDataModule(source="digits", batch_size=64)
    rss_before = peak_rss_mb()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                         limit_val_batches=0, default_root_dir=str(out_dir),
                         enable_model_summary=False, log_every_n_steps=25)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=data)
    fit_s = time.perf_counter() - t0
    memory = {"peak_rss_mb_training": peak_rss_mb(), "peak_rss_mb_before_training": rss_before,
              **state_accounting(module)}
    if torch.cuda.is_available():
        memory["cuda_peak_mb_training"] = torch.cuda.max_memory_allocated() / 2**20
    module = module.to("cpu" if not torch.cuda.is_available() else module.device)
    loss_plot(module.loss_history, out_dir / "loss_curve.png")

    quality = quality_table(module, GUIDANCE, per_class=per_class, grids_dir=out_dir / "grids")
    timing = sampling_times(module, batch_sizes=(1, 10 * per_class))
    first = sum(v for _, v in module.loss_history[:25]) / max(1, len(module.loss_history[:25]))
    last = sum(v for _, v in module.loss_history[-25:]) / max(1, len(module.loss_history[-25:]))
    figures = {"loss_first25": first, "loss_last25": last, "fit_seconds": fit_s,
               **{f"{k}_w{r['w']:g}": r[k] for r in quality
                  for k in ("teacher_acc", "student_acc", "teacher_fd", "student_fd")},
               **{f"{k}_b{r['batch']}": r[k] for r in timing
                  for k in ("speedup_two_pass", "speedup_doubled_batch", "student_s",
                            "teacher_two_pass_s")},
               **{k: v for k, v in memory.items()}}
    notes = "\n\n".join([
        f"{steps} distillation steps in {fit_s:.0f} s, torch threads: {threads}. "
        f"Distillation loss: {first:.5f} (first 25 steps) -> {last:.5f} (last 25).",
        f"Quality: {10 * per_class} samples per w, the same noise for teacher and student, "
        f"{sample_steps} DDIM steps; class accuracy from the digits classifier, FD the "
        "Fréchet distance in its feature space. Grids: grids/teacher_cfg_w*.png, "
        "grids/student_w*.png (one row per class).",
        f"Memory: peak RSS of this process during training "
        f"{memory['peak_rss_mb_training']:.0f} MB (before training: "
        f"{memory['peak_rss_mb_before_training']:.0f} MB). Weights + grads + AdamW state: "
        f"LoRA distillation {memory['state_mb_lora']:.2f} MB vs full distillation "
        f"{memory['state_mb_full']:.2f} MB ({memory['state_ratio']:.2f}x). At this size "
        "activations and the Python/torch runtime dominate; see the benchmark suite for a "
        "~100 M-parameter UNet measured in fresh processes.",
        f"The adapter: {out_dir / 'adapter.safetensors'}; its diffusers export: "
        f"{out_dir / 'diffusers_lora'}."])
    write_demo_report(
        out_dir, "lora-distill",
        f"lora-distill demo: guidance distilled into LoRA ({steps} steps)",
        headline(quality, timing), figures, quality_rows(quality), notes,
        units={k: "s" for k in figures if k.endswith("_s") or k == "fit_seconds"}
        | {k: "MB" for k in figures if "_mb" in k},
        tables={"Sampling time per image": timing_rows(timing)},
        plots=["loss_curve.png", "grids/teacher_cfg_w2.png", "grids/student_w2.png"])
    print(f"lora-distill demo: report in {out_dir / 'report.html'}")
    return figures


def headline(quality: list[dict], timing: list[dict]) -> list[Headline]:
    rows = [Headline(f"class accuracy at w = {r['w']:g}, student (one pass)",
                     r["student_acc"], "%", r["teacher_acc"], "teacher CFG, two passes",
                     "the issue's goal: within 3 points of the teacher with CFG")
            for r in quality if r["w"] in (2.0, 3.0)]
    rows += [Headline(f"sampling speed-up at batch {r['batch']}", r["speedup_two_pass"], "x",
                      None, "", "the issue's goal: at least 1.8x faster than two-pass CFG "
                                "(the paper: ~2x)")
             for r in timing]
    return rows
