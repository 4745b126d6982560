"""Benchmark suite `lora-distill`: LoRA guidance distillation, quality, speed and memory.

Claims checked (issue 6; the paper: "LoRA-Enhanced Distillation on Guided Diffusion
Models", Golnari 2023):

1. Quality at the embedded size: after distillation, the student's class accuracy
   is within 3 points of the teacher with CFG at w = 2 and w = 3 (same noise, same
   DDIM steps), with the Fréchet distance in the classifier's feature space beside it.
2. Speed: sampling time per image, teacher CFG (two UNet passes per step) over the
   fused student (one pass), >= 1.8x at batch 1 and batched. The teacher with CFG as
   one doubled batch (diffusers' way) is reported beside it.
3. Memory at a realistic size (random weights): a ~100 M-parameter class-conditional
   UNet2DConditionModel at 32x32x3, batch 4. Peak RSS of a training run of LoRA
   distillation (one shared model, teacher = adapters off) vs full distillation
   (frozen teacher copy + fully trained student with AdamW), each in a fresh Python
   process and each through `Trainer.fit` on the plugin's DistillModule (the full
   row: FullDistill, the same module with its adapters detached). Goal <= 0.6x (the
   paper: ~0.5x). The same two rows at the embedded size (the shipped digits
   teacher) show that there, activations and the runtime dominate and nothing is saved.

    lorakit bench --suite lora-distill --out reports/bench/lora-distill --threads 2 [--quick]
    python -m lorakit.benchmarks.lora_distill_suite --out ... (the same, through the runner)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lorakit.benchmarks.memory import reset_peak_rss, rss_mb

SUITE = "lora-distill"
BIG = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512),
           layers_per_block=2, down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * 3,
           up_block_types=("AttnUpBlock2D",) * 3 + ("UpBlock2D",), mid_block_type="UNetMidBlock2D",
           num_class_embeds=11, attention_head_dim=64, norm_num_groups=32, time_cond_proj_dim=32)


# --- memory: one training run per fresh process ------------------------------------------
def full_distill_class():
    """The baseline contender, built on the plugin's own module so that both memory rows go
    through the same loss, `training_step` and `Trainer.fit`: the student is the whole UNet
    (AdamW over every weight) and the teacher a frozen copy of it, as full distillation
    keeps. (A class made on demand: the import of the plugin stays in the worker.)"""
    import copy

    from lorakit.plugins.lora_distill.module import DistillModule

    class FullDistill(DistillModule):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            self.adapters.detach()
            self.teacher = copy.deepcopy(self.model).requires_grad_(False)
            self.model.requires_grad_(True)

        def teacher_eps(self, x_t, t, cond, w, uncond=None, batched: bool = False):
            with torch.no_grad():
                return self.teacher.cfg(x_t, t, cond, w, uncond, batched=batched)

        def on_train_end(self) -> None:
            """No adapter file: the baseline's student is a whole UNet."""

    return FullDistill


def memory_worker(mode: str, size: str, steps: int, batch: int, threads: int,
                  pretrained: str | None = None) -> dict:
    """`steps` steps of DistillModule through `Trainer.fit` (mode "lora": the plugin as a
    user runs it; "full": the FullDistill baseline) and the peak memory of this process.
    pretrained: the teacher folder (None: the embedded digits teacher)."""
    import tempfile

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Timer
    from torch.utils.data import DataLoader

    from lorakit.plugins.lora_distill.module import DistillModule

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        reset_peak_rss()
        baseline = rss_mb("VmRSS")
        cls = DistillModule if mode == "lora" else full_distill_class()
        module = cls(pretrained=pretrained, output_dir=tmp)
        built = rss_mb("VmRSS")
        # real x_0 in the batch, as the digits default gives: no teacher sampling for x_0
        classes = module.model.conditioning.null_class
        data = [{"images": torch.randn(module.model.sample_shape),
                 "class_labels": torch.tensor(i % classes)} for i in range(steps * batch)]
        timer = Timer()  # the training stage only: not Lightning's set-up, not the save
        trainer = pl.Trainer(max_steps=steps, accelerator=device, devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_val_batches=0,
                             default_root_dir=tmp, callbacks=[timer])
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.fit(module, DataLoader(data, batch_size=batch))
    base = [p for n, p in module.model.unet.named_parameters()
            if not n.rsplit(".", 1)[-1].startswith("lora_")]
    out = {"mode": mode, "size": size, "steps": steps, "batch": batch,
           "params": sum(p.numel() for p in base),
           "trainable": sum(p.numel() for p in module.trainable_parameters()),
           "rss_baseline_mb": baseline, "rss_built_mb": built, "rss_peak_mb": rss_mb(),
           "training_mb": rss_mb() - baseline,
           "step_s": timer.time_elapsed("train") / steps, "loss": module.loss_history[-1][1]}
    if device == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def write_big_teacher(folder: Path) -> str:
    """The random-weight ~100 M-parameter UNet as a diffusers folder for DistillModule."""
    from diffusers import UNet2DConditionModel

    from lorakit.domains.imaging.guided_unet import COND_PROJ
    from lorakit.domains.imaging.teacher import scheduler

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**BIG)
    with torch.no_grad():
        unet.get_submodule(COND_PROJ).weight.zero_()
    unet.save_pretrained(folder)
    scheduler().save_config(folder)
    return str(folder)


def run_worker(mode: str, size: str, steps: int, batch: int, threads: int,
               pretrained: str | None = None) -> dict:
    cmd = [sys.executable, "-m", "lorakit.benchmarks.lora_distill_suite", "--memory-worker",
           mode, "--size", size, "--steps", str(steps), "--batch", str(batch),
           "--threads", str(threads), *(["--pretrained", pretrained] if pretrained else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory worker {mode}/{size} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# --- the suite ---------------------------------------------------------------------------
def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    timing = rows["timing"]
    labels = [f"batch {r['batch']}" for r in timing]
    xs = range(len(timing))
    for k, (key, name) in enumerate([("teacher_two_pass_s", "teacher CFG, 2 passes"),
                                     ("teacher_doubled_batch_s", "teacher CFG, 2B batch"),
                                     ("student_s", "student, 1 pass (fused)")]):
        a.bar([x + 0.27 * (k - 1) for x in xs], [1e3 * r[key] for r in timing], width=0.27,
              label=name)
    a.set_xticks(list(xs), labels)
    a.set_ylabel("ms per image")
    a.set_yscale("log")
    a.set_title("DDIM sampling time")
    a.legend(fontsize=8)
    mem = rows["memory"]
    names = [f"{m['size']}\n{m['mode']}" for m in mem]
    b.bar(names, [m["rss_peak_mb"] for m in mem], color=["C0", "C1"] * (len(mem) // 2))
    b.set_ylabel("peak RSS, MB")
    b.set_title("training memory, fresh process each")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def memory_markdown(memory: list[dict]) -> str:
    lines = ["| size | mode | params | trainable | batch | peak RSS MB | after imports MB | "
             "peak - after imports MB | s/step | CUDA peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in memory:
        cuda = f"{m['cuda_peak_mb']:.0f}" if "cuda_peak_mb" in m else "-"
        lines.append(f"| {m['size']} | {m['mode']} | {m['params'] / 1e6:.2f} M | "
                     f"{m['trainable'] / 1e6:.3f} M | {m['batch']} | {m['rss_peak_mb']:.0f} | "
                     f"{m['rss_baseline_mb']:.0f} | {m['training_mb']:.0f} | "
                     f"{m['step_s']:.2f} | {cuda} |")
    return "\n".join(lines)


def run(out_dir, threads: int = 2, quick: bool = False) -> dict:
    import lightning.pytorch as pl

    from lorakit.domains.imaging.quality import DigitScorer
    from lorakit.plugins.lora_distill.data import ConditioningDataModule
    from lorakit.plugins.lora_distill.evaluate import (
        quality_markdown,
        quality_table,
        sampling_times,
        timing_markdown,
    )
    from lorakit.plugins.lora_distill.module import DistillModule

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    steps = 300 if quick else 1000
    per_class = 10 if quick else 20

    # 1-2: quality and speed at the embedded size
    pl.seed_everything(0)
    module = DistillModule(output_dir=str(out_dir / "student"))
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                         limit_val_batches=0, enable_model_summary=False,
                         enable_progress_bar=False, default_root_dir=str(out_dir))
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=ConditioningDataModule(batch_size=64))
    fit_s = time.perf_counter() - t0
    scorer = DigitScorer()
    quality = quality_table(module, (1.0, 2.0, 3.0), per_class=per_class, scorer=scorer,
                            grids_dir=out_dir / "grids")
    timing = sampling_times(module, batch_sizes=(1, 64), repeats=2 if quick else 3)

    # 3: memory, each run in a fresh process
    memory = []
    sizes = [("embedded", 64, 3)] + ([] if quick else [("big", 4, 3)])
    with tempfile.TemporaryDirectory() as big_dir:
        for size, batch, n in sizes:
            pretrained = write_big_teacher(Path(big_dir)) if size == "big" else None
            for mode in ("lora", "full"):
                memory.append(run_worker(mode, size, n, batch, threads, pretrained))

    figures = {"fit_seconds": fit_s, "distill_steps": steps}
    for r in quality:
        w = f"{r['w']:g}"
        figures[f"teacher_acc_w{w}"] = r["teacher_acc"]
        figures[f"student_acc_w{w}"] = r["student_acc"]
        figures[f"acc_gap_w{w}"] = r["teacher_acc"] - r["student_acc"]
        figures[f"teacher_fd_w{w}"] = r["teacher_fd"]
        figures[f"student_fd_w{w}"] = r["student_fd"]
    for r in timing:
        figures[f"speedup_two_pass_b{r['batch']}"] = r["speedup_two_pass"]
        figures[f"speedup_doubled_batch_b{r['batch']}"] = r["speedup_doubled_batch"]
    by = {(m["size"], m["mode"]): m for m in memory}
    for size, *_ in sizes:
        lo, fu = by[(size, "lora")], by[(size, "full")]
        figures[f"peak_rss_ratio_{size}"] = lo["rss_peak_mb"] / fu["rss_peak_mb"]
        figures[f"training_mb_ratio_{size}"] = lo["training_mb"] / max(fu["training_mb"], 1.0)
        if "cuda_peak_mb" in lo:
            figures[f"cuda_peak_ratio_{size}"] = lo["cuda_peak_mb"] / fu["cuda_peak_mb"]
    goals = {
        "quality_within_3_points_w2": figures["acc_gap_w2"] <= 3.0,
        "quality_within_3_points_w3": figures["acc_gap_w3"] <= 3.0,
        "speedup_two_pass_b1_ge_1.8": figures["speedup_two_pass_b1"] >= 1.8,
        "speedup_two_pass_b64_ge_1.8": figures["speedup_two_pass_b64"] >= 1.8,
    }
    if not quick:
        goals["memory_big_le_0.6"] = figures["peak_rss_ratio_big"] <= 0.6
    plot({"timing": timing, "memory": memory}, out_dir / "lora_distill.png")
    rows = ([{"table": "quality", **r} for r in quality]
            + [{"table": "sampling time", **r} for r in timing]
            + [{"table": "training memory", **m} for m in memory])
    figures.update({f"goal_{k}": float(v) for k, v in goals.items()})
    notes = "\n".join([
        f"Student after {steps} distillation steps ({fit_s:.0f} s); quality from "
        f"{10 * per_class} samples per w, teacher CFG and student from the same noise, "
        "25 DDIM steps; acc = class accuracy (%) of the digits classifier, fd = Fréchet "
        "distance in its feature space to the real digits.",
        "Sampling time per image at w = 2: teacher CFG as two UNet passes per step, as one "
        "doubled batch (diffusers' way), and the student as one pass with merged adapters.",
        "Training memory: peak RSS of a fresh process per row, its peak reset after the "
        "imports (rss_baseline_mb: RSS then, before the model; training_mb = peak - "
        "baseline: model, optimizer state, activations, Lightning); each row is 3 steps of "
        "`Trainer.fit` on the plugin's DistillModule (lora: as `lorakit lora-distill fit` "
        "runs it; full: FullDistill, the same loss and loop with the adapters detached, AdamW "
        "over the whole UNet and a frozen teacher copy); s/step is the training stage only. "
        "'big' is a random-weight ~100 M-parameter UNet2DConditionModel at 32x32x3, batch 4; "
        "'embedded' the shipped digits teacher at batch 64.",
        "Goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in goals.items()),
        "", "### Quality", quality_markdown(quality),
        "", "### Sampling time per image", timing_markdown(timing),
        "", "### Training memory", memory_markdown(memory),
    ])
    return {"figures": figures, "rows": rows, "notes": notes}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench") / SUITE)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--memory-worker", choices=("lora", "full"))
    p.add_argument("--size", choices=("embedded", "big"), default="big")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--pretrained", help="teacher folder of a memory worker (default: embedded)")
    args = p.parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args.size, args.steps, args.batch,
                                       args.threads, args.pretrained)))
        return
    from lorakit.reports.bench import run_suite

    result = run_suite(SUITE, args.out, threads=args.threads, quick=args.quick)
    print(json.dumps(result["figures"], indent=2))


if __name__ == "__main__":
    main()
