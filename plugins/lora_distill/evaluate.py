"""Teacher-with-CFG vs student, from the same noise: quality per w and sampling time.

Shared by `lorakit lora-distill demo` and the `lora-distill` benchmark suite.

Sampling time is measured three ways per image, all with the same DDIM steps:
- teacher, two passes: ε_c and ε_u as two UNet calls per step (what CFG costs in
  UNet passes, the paper's accounting);
- teacher, one doubled batch: ε_u and ε_c in one call of 2B (how diffusers pipelines
  run CFG; on an idle accelerator at small batch this is nearly free, on a CPU it
  is not);
- student, one pass, adapters merged into the weights.
"""
from __future__ import annotations

import time

import torch

from lorakit.domains.imaging.quality import DigitScorer
from lorakit.reports.bench import markdown_table


def fixed_noise(n: int, shape, seed: int = 1234) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def quality_table(module, guidance=(1.0, 2.0, 3.0), per_class: int = 20,
                  scorer: DigitScorer | None = None, steps: int | None = None,
                  grids_dir=None) -> list[dict]:
    """Class accuracy (%) and Fréchet distance of teacher-CFG and student samples per w."""
    from lorakit.domains.imaging.grid import save_grid

    scorer = scorer or DigitScorer()
    labels = torch.arange(10).repeat_interleave(per_class)
    noise = fixed_noise(len(labels), module.model.sample_shape)
    rows = []
    module.eval()
    for w in guidance:
        teacher = module.sample(labels, noise, w, teacher=True, steps=steps).cpu()
        with module.fused():
            student = module.sample(labels, noise, w, steps=steps).cpu()
        qt, qs = scorer(teacher, labels), scorer(student, labels)
        rows.append({"w": w, "teacher_acc": qt.accuracy, "student_acc": qs.accuracy,
                     "teacher_fd": qt.frechet, "student_fd": qs.frechet,
                     "mean_abs_diff": float((teacher - student).abs().mean()), "n": qt.n})
        if grids_dir is not None:
            pick = torch.cat([torch.arange(c * per_class, c * per_class + min(per_class, 10))
                              for c in range(10)])
            save_grid(teacher[pick], f"{grids_dir}/teacher_cfg_w{w:g}.png",
                      nrow=min(per_class, 10))
            save_grid(student[pick], f"{grids_dir}/student_w{w:g}.png", nrow=min(per_class, 10))
    return rows


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _best_times(fns: dict, repeats: int) -> dict[str, float]:
    """Best of `repeats` wall times per function, run interleaved so drift hits all alike."""
    for fn in fns.values():
        fn()  # warm-up
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def _batch_times(module, bs: int, steps: int | None, w: float, repeats: int) -> dict:
    labels = torch.arange(bs) % 10
    noise = fixed_noise(bs, module.model.sample_shape)

    def student():
        with module.fused():
            return module.sample(labels, noise, w, steps=steps)

    t = _best_times({
        "two": lambda: module.sample(labels, noise, w, teacher=True, steps=steps),
        "doubled": lambda: module.sample(labels, noise, w, teacher=True, steps=steps,
                                         batched_cfg=True),
        "one": student}, repeats)
    return {"batch": bs, "teacher_two_pass_s": t["two"] / bs,
            "teacher_doubled_batch_s": t["doubled"] / bs, "student_s": t["one"] / bs,
            "speedup_two_pass": t["two"] / t["one"],
            "speedup_doubled_batch": t["doubled"] / t["one"]}


@torch.no_grad()
def sampling_times(module, batch_sizes=(1, 64), steps: int | None = None, w: float = 2.0,
                   repeats: int = 3) -> list[dict]:
    """Seconds per image: teacher two passes, teacher doubled batch, fused student."""
    module.eval()
    return [_batch_times(module, bs, steps, w, repeats) for bs in batch_sizes]


def quality_rows(rows: list[dict]) -> list[dict]:
    """`quality_table`'s rows as a report shows them."""
    return [{"w": r["w"], "teacher CFG acc %": r["teacher_acc"],
             "student acc %": r["student_acc"], "teacher FD": r["teacher_fd"],
             "student FD": r["student_fd"], "mean abs diff": r["mean_abs_diff"]}
            for r in rows]


def timing_rows(rows: list[dict]) -> list[dict]:
    """`sampling_times`' rows as a report shows them (ms per image, speed-ups as x)."""
    return [{"batch": r["batch"], "teacher 2 passes ms/img": 1e3 * r["teacher_two_pass_s"],
             "teacher 2B batch ms/img": 1e3 * r["teacher_doubled_batch_s"],
             "student 1 pass ms/img": 1e3 * r["student_s"],
             "speed-up vs 2 passes (x)": r["speedup_two_pass"],
             "speed-up vs 2B batch (x)": r["speedup_doubled_batch"]} for r in rows]


def quality_markdown(rows: list[dict]) -> str:
    return markdown_table(quality_rows(rows))


def timing_markdown(rows: list[dict]) -> str:
    return markdown_table(timing_rows(rows))
