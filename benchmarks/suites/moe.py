"""Benchmark suite `moe`: mixtures of LoRA experts on MiniLM, one model for five tasks.

Base: all-MiniLM-L6-v2 (`lorakit.domains.text.minilm`), mean-pooled, one linear head per
task, fitted through `AdapterModule` and `lightning.Trainer.fit`
(`benchmarks/common/sentence_classifier.py`'s `RecordingModule` and `fit_recorded`). Tasks:
the four sentiment domains (movies, tweets, amazon, nyt: 2 classes each) and WordNet's 45
lexicographer classes, loaded as in the `merge` suite; a training batch mixes the five
(every row goes through its own task's head), so one adapter serves all of them.

Rows, each adapter on the FFN of all 6 layers (intermediate.dense 384→1536 and
output.dense 1536→384), at equal trainable parameters where the paper's design allows:
- LoRA r=36: the rank that matches 8 experts of rank 4 plus a router per module
  exactly (LoRAMoE); MixLoRA and LLaVA-MoLE route once per FFN, so they hold 8·1536
  fewer router numbers per layer (756k against the LoRA's 850k);
- LoRA r=8: the parameters a top-2-of-8 mixture of rank 4 *uses* per token (step time);
- MixLoRA: 8 experts of rank 4, top-2, one router per FFN (`router_scope="block"`: the
  FFN's input picks each token's experts, expert e being the e-th LoRA of both FFN
  matrices), Switch balance loss 0.01 (its separate attention LoRA left out, so every
  row adapts the same modules);
- LLaVA-MoLE: 8 experts of rank 4, top-1, one router per MLP (block scope);
- LoRAMoE: 8 experts of rank 4, a dense softmax router per module as in its code,
  localized balancing (weight 0.1,
  δ 0.1), WordNet rows as the world-knowledge type (0), sentiment rows as new tasks (1);
- MoLA increasing (experts per layer 2,2,4,4,6,6) vs MoLA uniform (4 per layer): 24
  experts of rank 8 each, top-2;
- X-LoRA over the five single-task LoRAs of the `merge` suite's recipe (rank 8 on
  query/value, trained one task each with its own head), only the scaling head trained on
  the task mixture; beside it each single adapter and their linear merge (the equal-weight
  average of the five updates: X-LoRA's own starting point), scored with each task's head.

Columns: per-task test accuracy, their average (mean ± SD over seeds), trainable
parameters (adapters and heads; X-LoRA: its scaling head), median step time, peak
memory a fit adds to the process, and forgetting: the drift of the base's
sentence embeddings on held-out prose (Jane Austen's Persuasion, a book none of the
tasks touch), 1 − mean cosine between the adapted and the frozen encoder's embeddings.

    run(out_dir, threads=1, quick=False) -> {"figures", "rows", "notes"}
    (+ accuracy_per_task.png, routing_<task>.png, runs.json)
"""
from __future__ import annotations

import contextlib
import gc
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..common.sentence_classifier import RecordingModule
from .merge import LABELS, TASKS, average

SUITE = "moe"
FFN = ["*.intermediate.dense", "encoder.layer.?.output.dense"]
XLORA = "X-LoRA (five single-task LoRAs)"
WORLD = TASKS.index("wordnet")          # LoRAMoE's world-knowledge type: lexical knowledge
MIXTURE = {"method": "mixture", "rank": 4, "alpha": 8.0, "n_experts": 8, "targets": FFN}
ROWS = {    # row name -> LoRAConfig fields
    "LoRA r=36 (equal parameters)": {"rank": 36, "alpha": 72.0, "targets": FFN},
    "LoRA r=8 (MixLoRA's active parameters)": {"rank": 8, "alpha": 16.0, "targets": FFN},
    "MixLoRA (top-2 of 8)": {**MIXTURE, "top_k": 2, "router_scope": "block"},
    "LLaVA-MoLE (top-1 of 8)": {**MIXTURE, "top_k": 1, "router_scope": "block"},
    "LoRAMoE (dense 8, LBC)": {**MIXTURE, "router": "dense", "lbc_weight": 0.1,
                               "lbc_delta": 0.1},
    "MoLA increasing (2,2,4,4,6,6)": {**MIXTURE, "rank": 8, "alpha": 16.0, "top_k": 2,
                                      "experts_per_layer": [2, 2, 4, 4, 6, 6]},
    "MoLA uniform (4 per layer)": {**MIXTURE, "rank": 8, "alpha": 16.0, "top_k": 2,
                                   "n_experts": 4},
}


@dataclass
class Budget:
    steps: int = 100                 # multi-task fits (batch mixes the five tasks)
    single_steps: int = 40           # each single-task LoRA for X-LoRA
    xlora_steps: int = 60
    batch: int = 16
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3])   # each row's sweep
    single_lr: float = 3e-3          # the single-task LoRAs: the merge suite's recipe
    train_n: int | None = 2000       # per task
    val_n: int = 64                  # per task
    test_n: int = 150                # per task
    drift_n: int = 150               # held-out Austen paragraphs
    val_every: int = 50
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


QUICK = Budget(steps=6, single_steps=3, xlora_steps=4, train_n=64, val_n=16, test_n=16,
               drift_n=16, val_every=3, seeds=[0])


# --- the model ------------------------------------------------------------------------------
class MultiTaskClassifier(RecordingModule):
    """Mean-pooled encoder with one adapter (a `LoRAConfig`, any method) and a linear head per
    task; each batch row carries its task, and goes through that task's head. The mixtures'
    auxiliary losses join the loss (AdapterModule adds them), with LoRAMoE's row types."""

    def __init__(self, encoder: nn.Module, config, lr: float, output_dir: str | None = None):
        super().__init__(lr=lr, output_dir=output_dir)
        self.encoder = encoder
        if config is not None:
            self.attach_adapters(encoder, config)
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, LABELS[t]) for t in TASKS})

    def hidden(self, batch: dict):
        return self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def embed(self, batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return (self.hidden(batch).last_hidden_state * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def scores(self, batch: dict) -> tuple[torch.Tensor, int, int]:
        """(mean cross-entropy, correct, rows) with every row through its task's head."""
        emb = self.embed(batch)
        loss, correct = emb.new_zeros(()), 0
        for i, task in enumerate(TASKS):
            rows = batch["task"] == i
            if rows.any():
                logits = self.heads[task](emb[rows])
                loss = loss + F.cross_entropy(logits, batch["labels"][rows], reduction="sum")
                correct += int((logits.argmax(-1) == batch["labels"][rows]).sum())
        n = len(batch["labels"])
        return loss / n, correct, n

    def row_types(self, batch: dict):
        if self.adapters is None:
            return contextlib.nullcontext()
        return self.adapters.row_types((batch["task"] != WORLD).long())

    def training_context(self, batch: dict):
        return self.row_types(batch)     # the step and its routing losses see the row types

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.scores(batch)[0]     # AdapterModule adds the routing losses

    def evaluate(self, batch: dict) -> tuple[torch.Tensor, int, int]:
        return self.scores(batch)


class XLoRAClassifier(MultiTaskClassifier):
    """The five single-task adapters under an X-LoRA scaling head, with the five tasks' own
    (frozen) heads: only the scaling head trains."""

    def __init__(self, encoder: nn.Module, files: dict, heads: dict, lr: float,
                 output_dir: str | None = None) -> None:
        from lorakit import XLoRA

        super().__init__(encoder, None, lr=lr, output_dir=output_dir)
        self.xlora = XLoRA.from_files(encoder, files, hidden_size=encoder.config.hidden_size)
        for task, state in heads.items():
            self.heads[task].load_state_dict(state)
        self.heads.requires_grad_(False)

    def hidden(self, batch: dict):
        return self.xlora(lambda: super(XLoRAClassifier, self).hidden(batch))


# --- data -----------------------------------------------------------------------------------
def with_task(items: list[dict], index: int) -> list[dict]:
    return [{**it, "task": index} for it in items]


def collate_tasks(items: list[dict]) -> dict:
    from ..common.sentence_classifier import collate

    return {**collate(items), "task": torch.tensor([it["task"] for it in items])}


def mixed_loader(tasks: dict, split: str, batch: int, seed: int | None = None,
                 only: str | None = None):
    from torch.utils.data import DataLoader

    items = [it for i, t in enumerate(TASKS) if only in (None, t)
             for it in with_task(tasks[t][split], i)]
    if seed is None:
        items.sort(key=lambda it: len(it["input_ids"]))
        return DataLoader(items, batch_size=batch, collate_fn=collate_tasks)
    return DataLoader(items, batch_size=batch, shuffle=True, collate_fn=collate_tasks,
                      generator=torch.Generator().manual_seed(seed), drop_last=True)


def held_out_prose(n: int) -> list[dict]:
    """The first n paragraphs of Persuasion (Austen's test novel), tokenised, cut at 64."""
    from lorakit.domains.text.austen import austen
    from lorakit.domains.text.minilm import minilm

    from ..common.sentence_classifier import encode
    from .merge import MAX_LENGTH

    _, tokenizer = minilm()
    paragraphs = [p for p in austen()["test"] if len(p.split()) >= 8][:n]
    return with_task(encode(tokenizer, [(p, 0) for p in paragraphs], MAX_LENGTH), 0)


# --- measuring ------------------------------------------------------------------------------
@torch.no_grad()
def per_task_accuracy(module: MultiTaskClassifier, tasks: dict, split: str) -> dict:
    module.eval()
    out = {}
    for task in TASKS:
        correct = total = 0
        for batch in mixed_loader(tasks, split, 64, only=task):
            _, right, n = module.scores(batch)
            correct += right
            total += n
        out[task] = 100 * correct / max(total, 1)
    return out


@torch.no_grad()
def embedding_drift(module: MultiTaskClassifier, prose: list[dict]) -> float:
    """1 − mean cosine between the adapted and the frozen encoder's sentence embeddings."""
    from torch.utils.data import DataLoader

    module.eval()
    sims = []
    for batch in DataLoader(prose, batch_size=32, collate_fn=collate_tasks):
        adapted = module.embed(batch)
        with module.adapters.disabled():
            base = module.embed(batch)
        sims.append(F.cosine_similarity(adapted, base, dim=-1))
    return float(1 - torch.cat(sims).mean())


@torch.no_grad()
def routing_maps(module: MultiTaskClassifier, tasks: dict) -> dict[str, dict[str, list]]:
    """task -> module path -> mean load per expert over that task's test tokens."""
    module.eval()
    maps: dict[str, dict[str, list]] = {}
    for task in TASKS:
        sums: dict[str, torch.Tensor] = {}
        batches = 0
        for batch in mixed_loader(tasks, "test", 64, only=task):
            module.embed(batch)
            for path, stats in module.adapters.routing_stats().items():
                sums[path] = sums.get(path, 0) + stats["load"]
            batches += 1
        maps[task] = {p: (v / max(batches, 1)).tolist() for p, v in sums.items()}
    return maps


def fitted(module: MultiTaskClassifier, tasks: dict, budget: Budget, seed: int, steps: int,
           run_dir: Path) -> dict:
    """Fit, then the row's measurements (not the test accuracy: read after all fits)."""
    from ..common.memory import reset_peak_rss, rss_mb
    from ..common.sentence_classifier import fit_recorded

    module.train()        # MiniLM arrives in eval mode; train it with its dropout
    gc.collect()
    reset_peak_rss()
    start = rss_mb("VmRSS")
    fit_recorded(module, mixed_loader(tasks, "train", budget.batch, seed=seed),
                 mixed_loader(tasks, "val", 64), steps, budget.val_every, run_dir)
    times = module.step_times[2:] or module.step_times
    # the fit's own growth: the process keeps earlier rows' freed memory, so its RSS at
    # the start of a fit rises from row to row and the absolute peak would say so
    return {"step_s": statistics.median(times), "fit_peak_mb": rss_mb() - start,
            "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "val_acc": 100 * module.val_curve[-1][2], "val_loss": module.val_curve[-1][1]}


def swept(fit, lrs: list[float]) -> tuple[object, dict]:
    """`fit(lr) -> (module, row)` at every rate of `lrs`; the run with the best validation
    accuracy (`validation_protocol.choose_lr`) is kept, with its rate and the sweep's
    validation numbers in the row. No test split is read here."""
    from ..common.validation_protocol import choose_lr

    runs = {lr: fit(lr) for lr in lrs}
    sweep = {lr: {"val_acc": row["val_acc"], "val_loss": row["val_loss"]}
             for lr, (_, row) in runs.items()}
    lr = choose_lr(sweep)
    module, row = runs.pop(lr)
    runs.clear()
    gc.collect()
    return module, {**row, "lr": lr, "sweep": {str(k): v for k, v in sweep.items()}}


def fit_row(fields: dict, tasks: dict, budget: Budget, seed: int, lr: float,
            run_dir: Path) -> tuple[MultiTaskClassifier, dict]:
    import lightning.pytorch as pl

    from lorakit import LoRAConfig
    from lorakit.domains.text.minilm import minilm

    pl.seed_everything(seed, verbose=False)
    encoder, _ = minilm()
    module = MultiTaskClassifier(encoder, LoRAConfig(**fields), lr=lr)
    return module, {**fitted(module, tasks, budget, seed, budget.steps, run_dir), "lr": lr}


def train_row(name: str, fields: dict, tasks: dict, prose: list[dict], budget: Budget,
              seed: int, out: Path, lr: float | None = None) -> dict:
    """One row at one seed: fitted at `lr`, or at each rate of the sweep and kept at the
    best on validation (`lr` None); then its test accuracy, drift and routing."""
    key = _key(name)

    def fit(rate: float):
        return fit_row(fields, tasks, budget, seed, rate, out / "runs" / f"{key}-{seed}-lr{rate:g}")
    module, row = swept(fit, budget.lrs) if lr is None else fit(lr)
    row["test"] = per_task_accuracy(module, tasks, "test")
    row["drift"] = embedding_drift(module, prose)
    if fields.get("method") == "mixture":
        row["routing"] = routing_maps(module, tasks)
        path = module.adapters.save(out / "adapters" / f"{key}-seed{seed}.safetensors")
        row["adapter_file"] = str(path.relative_to(out))
    return row


def xlora_rows(tasks: dict, prose: list[dict], budget: Budget, seed: int, out: Path,
               lr: float | None = None) -> dict:
    """The five single-task LoRAs (the merge suite's recipe), each alone, their linear
    merge, and X-LoRA over them (its head at `lr`, or swept on validation when None)."""
    import lightning.pytorch as pl

    from lorakit import merge_adapters
    from lorakit.domains.text.minilm import minilm

    from . import merge as merge_suite

    single = merge_suite.Budget(steps=budget.single_steps, batch=budget.batch,
                                lr=budget.single_lr, val_every=budget.val_every)
    files, heads = {}, {}
    for task in TASKS:
        files[task], heads[task] = merge_suite.train_task(task, tasks[task], single, seed, out)
    score = merge_suite.Scorer(heads, tasks)
    rows = {f"single LoRA: {t}": {"test": score(files[t], "test"), "trainable": None}
            for t in TASKS}
    merged = merge_adapters([files[t] for t in TASKS], method="concat",
                            weights=[1 / len(TASKS)] * len(TASKS))
    rows["linear merge (average of the five)"] = {"test": score(merged, "test"),
                                                  "trainable": None}

    def fit(rate: float):
        pl.seed_everything(seed, verbose=False)
        encoder, _ = minilm()
        module = XLoRAClassifier(encoder, files, heads, lr=rate)
        return module, {**fitted(module, tasks, budget, seed, budget.xlora_steps,
                                 out / "runs" / f"xlora-{seed}-lr{rate:g}"), "lr": rate}
    module, row = swept(fit, budget.lrs) if lr is None else fit(lr)
    row["test"] = per_task_accuracy(module, tasks, "test")
    module.xlora.save(out / "adapters" / f"xlora-head-seed{seed}.safetensors")
    rows[XLORA] = row
    return rows


# --- the run --------------------------------------------------------------------------------
def run(out_dir, threads: int = 1, quick: bool = False, budget: Budget | None = None) -> dict:
    from .merge import load_tasks

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    budget = budget or (QUICK if quick else Budget())
    t_start = time.time()
    tasks = load_tasks(budget)
    prose = held_out_prose(budget.drift_n)
    per_seed: dict[int, dict] = {}
    chosen: dict[str, float] = {}       # row -> learning rate, from the first seed's sweep
    for seed in budget.seeds:
        rows = {}
        for name, fields in ROWS.items():
            rows[name] = train_row(name, fields, tasks, prose, budget, seed, out,
                                   lr=chosen.get(name))
            chosen[name] = rows[name]["lr"]
            _say(f"seed {seed}: {name}: lr {chosen[name]:g}, validation "
                 f"{rows[name]['val_acc']:.1f}, step {rows[name]['step_s']:.2f} s "
                 f"(total {time.time() - t_start:.0f} s)")
        rows.update(xlora_rows(tasks, prose, budget, seed, out, lr=chosen.get(XLORA)))
        chosen[XLORA] = rows[XLORA]["lr"]
        _say(f"seed {seed}: X-LoRA rows done, head lr {chosen[XLORA]:g} "
             f"(total {time.time() - t_start:.0f} s)")
        per_seed[seed] = rows
    table = summary_rows(per_seed)
    figures = goal_figures(table)
    figures["wall_s"] = time.time() - t_start
    plot_accuracy(table, out / "accuracy_per_task.png")
    first = per_seed[budget.seeds[0]]
    for task in TASKS:
        plot_routing({n: r["routing"][task] for n, r in first.items() if "routing" in r},
                     task, out / f"routing_{task}.png")
    (out / "runs.json").write_text(json.dumps(
        {str(s): {n: {k: v for k, v in r.items() if k != "routing"} for n, r in rows.items()}
         for s, rows in per_seed.items()}, indent=1, default=str))
    figures.update({f"{_key(n)}_lr": lr for n, lr in chosen.items()})
    budget_note = (f"This run: {budget.steps} multi-task steps (X-LoRA {budget.xlora_steps}, "
                   f"each single-task LoRA {budget.single_steps} at lr {budget.single_lr:g}), "
                   f"learning rates {budget.lrs} swept per row on seed {budget.seeds[0]}'s "
                   f"validation split (chosen: {chosen}), batch "
                   f"{budget.batch}, {budget.train_n} training / {budget.val_n} validation / "
                   f"{budget.test_n} test items per task, {len(prose)} held-out paragraphs, "
                   f"seeds {budget.seeds}.\n\n")
    return {"figures": figures, "rows": table, "notes": budget_note + NOTES}


NOTES = """\
Settings: every row (and X-LoRA's scaling head) gets the same learning-rate sweep on the
first seed, kept at the rate with the best validation accuracy (ties: lower validation
loss; `validation_protocol.choose_lr`); the other seeds reuse that rate. Batch 16 mixing
the five tasks, the same steps for every row; the mixtures' own settings are the
papers' (MixLoRA's 0.01 balance weight, LoRAMoE's two groups), and a row's test split is
read only for the run its sweep kept. The sweep's validation numbers are in runs.json.
The single-task LoRAs under X-LoRA and the linear merge follow the `merge` suite's
recipe at its rate (3e-3); they are X-LoRA's inputs, not swept rows. Equal parameters:
8 experts of rank 4 plus a router per module on intermediate.dense and output.dense
(LoRAMoE) hold exactly as many numbers as one LoRA of rank 36 there; MixLoRA and
LLaVA-MoLE route once per FFN and hold 8·1536 fewer router numbers per layer (the LoRA
has ~10 % more); MoLA's 24 experts of rank 8 hold the same expert numbers with fewer
router rows. Step time is the median wall time of a training step (forward,
backward, optimizer) in one process, rows run one after another on the same machine;
X-LoRA's includes its second (scaling) pass. Memory (`fit_peak_mb`) is the process's
peak RSS during the fit minus its RSS when the fit started: what the fit itself adds
(activations, gradients, optimizer state), on a CPU the one memory counter there is. Forgetting is
measured as MiniLM's embedding drift on held-out prose rather than SmolLM2's perplexity:
a SmolLM2-135M fine-tune per row would multiply the suite's time several-fold on two
CPU cores, and the embedding drift reads the same question (how far the adapted
encoder moved from the base on text no task touches) from the very models the table
scores. A mixture computes every expert's r-wide down projection in one matmul and
zeroes the unselected experts' gates (see core/variants/mixture.py), so its FLOPs are
those of a rank E·r LoRA, not of its k active experts.
"""


def summary_rows(per_seed: dict[int, dict]) -> list[dict]:
    from ..common.validation_protocol import mean_sd

    names = list(next(iter(per_seed.values())))
    table = []
    for name in names:
        runs = [rows[name] for rows in per_seed.values()]
        row: dict = {"row": name}
        for t in TASKS:
            row[f"{t}_acc"] = mean_sd([r["test"][t] for r in runs])[0]
        row["average_acc"], row["average_acc_sd"] = mean_sd([average(r["test"]) for r in runs])
        for key in ("trainable", "step_s", "fit_peak_mb", "drift", "val_acc"):
            values = [r[key] for r in runs if r.get(key) is not None]
            if values:
                row[key] = mean_sd(values)[0]
                if key == "drift":
                    row["drift_sd"] = mean_sd(values)[1]
        if runs[0].get("lr") is not None:
            row["lr"] = runs[0]["lr"]
        row["seeds"] = len(runs)
        table.append(row)
    return table


def goal_figures(table: list[dict]) -> dict[str, float]:
    """The issue's goals as differences and ratios (points of average accuracy)."""
    by = {r["row"]: r for r in table}
    lora, active = by["LoRA r=36 (equal parameters)"], by["LoRA r=8 (MixLoRA's active parameters)"]
    mix = by["MixLoRA (top-2 of 8)"]
    singles = [r["average_acc"] for n, r in by.items() if n.startswith("single LoRA")]
    xlora = by[XLORA]
    figures = {f"{_key(n)}_average_acc": r["average_acc"] for n, r in by.items()}
    figures.update({
        "mixlora_minus_lora_equal_params": mix["average_acc"] - lora["average_acc"],
        "mola_increasing_minus_uniform": (by["MoLA increasing (2,2,4,4,6,6)"]["average_acc"]
                                          - by["MoLA uniform (4 per layer)"]["average_acc"]),
        "loramoe_drift_minus_lora_drift": (by["LoRAMoE (dense 8, LBC)"]["drift"]
                                           - lora["drift"]),
        "xlora_minus_best_single": xlora["average_acc"] - max(singles),
        "xlora_minus_linear_merge": (xlora["average_acc"]
                                     - by["linear merge (average of the five)"]["average_acc"]),
        "mixlora_step_time_over_active_lora": mix["step_s"] / active["step_s"],
        "mixlora_step_time_over_equal_lora": mix["step_s"] / lora["step_s"],
    })
    return figures


def _key(name: str) -> str:
    keep = "".join(c if c.isalnum() else "_" for c in name.lower().split(" (")[0])
    return "_".join(filter(None, keep.split("_")))


def plot_accuracy(table: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*TASKS, "average"]
    width = 0.8 / max(len(table), 1)
    fig, ax = plt.subplots(figsize=(15, 5))
    cmap = plt.get_cmap("tab20")
    for i, row in enumerate(table):
        values = [row[f"{t}_acc"] for t in TASKS] + [row["average_acc"]]
        xs = [g + (i - len(table) / 2 + 0.5) * width for g in range(len(groups))]
        ax.bar(xs, values, width, label=row["row"], color=cmap(i % 20))
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("test accuracy (%), mean over seeds")
    ax.set_title("MiniLM, one adapter for five tasks: mixtures of LoRA experts vs LoRA")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def plot_routing(maps: dict[str, dict[str, list]], task: str, png: Path) -> None:
    """One heat map per mixture: adapted module (rows) × expert (columns), mean load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 4.5), squeeze=False)
    for ax, (name, per_module) in zip(axes[0], maps.items()):
        width = max(len(v) for v in per_module.values())
        grid = np.full((len(per_module), width), np.nan)
        for i, load in enumerate(per_module.values()):
            grid[i, :len(load)] = load
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("expert")
        ax.set_yticks(range(len(per_module)),
                      [p.replace("encoder.layer.", "L").replace(".dense", "")
                       for p in per_module], fontsize=6)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(f"routing on the {task} test set: share of tokens per expert")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _say(text: str) -> None:
    print(f"[moe suite] {text}", flush=True)


if __name__ == "__main__":
    from lorakit.benchmarks.common.command_line import suite_main

    suite_main(SUITE, __doc__, run)
