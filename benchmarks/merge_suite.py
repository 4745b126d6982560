"""Benchmark suite `merge`: five single-task LoRAs on MiniLM merged into one adapter.

Base: all-MiniLM-L6-v2 (`lorakit.domains.text.minilm`), mean-pooled, one linear head per
task (`benchmarks/sentence_classifier.py`), fitted through `AdapterModule` and
`lightning.Trainer.fit`. Tasks: the four sentiment domains of
`lorakit.domains.text.sentiment` (movies, tweets, amazon, nyt: 2 classes each) and
WordNet's 45 lexicographer classes (`lorakit.domains.text.wordnet`). Each task trains
its own LoRA (rank 8, alpha 16, query and value of all 6 layers) and its own head; the
heads stay outside the merge, so a merged adapter is scored on task t with task t's head.

Rows: each single adapter on its own task (the upper reference), `concat` (rank 5r, the
exact sum of the five updates: the no-compression reference), PEFT's merges through
`lorakit.merge_adapters` (cat: PEFT's own concatenation, rank 5r, a check on `concat`;
linear, ties, dare_linear, dare_ties, magnitude_prune at rank r; svd at r, 2r, 4r) and
LoRA-LEGO at k = r, 2r, 4r. Columns: per-task test accuracy, their average (mean ± SD
over seeds), merged rank, merge time.

Protocol: every merge method gets the same tuning budget, 3 settings (a global weight λ
on every adapter's update, and the method's own option: density for ties / DARE /
magnitude pruning, the output-reweighting target for LoRA-LEGO), chosen per seed on the
average validation accuracy over the five tasks; the test splits are read only after
every choice is made (`validation_protocol.mean_sd` for the seeds).

    run(out_dir, threads=1, quick=False) -> {"figures", "rows", "notes"}
    (+ per_task_accuracy.png, runs.json)
    quick: 1 seed, 6 training steps, 96 training / 32 validation / 32 test items per task.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

SUITE = "merge"
SENTIMENT_TASKS = ("movies", "tweets", "amazon", "nyt")
TASKS = (*SENTIMENT_TASKS, "wordnet")
LABELS = {"movies": 2, "tweets": 2, "amazon": 2, "nyt": 2, "wordnet": 45}
MAX_LENGTH = 64
RANK, ALPHA, TARGETS = 8, 16.0, ["*.query", "*.value"]


@dataclass
class Budget:
    steps: int = 80
    batch: int = 16
    lr: float = 3e-3
    train_n: int | None = 4000       # per task; None: the whole training split
    val_n: int = 100                 # per task, a fixed subset
    test_n: int = 200                # per task, a fixed subset
    val_every: int = 40
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


QUICK = Budget(steps=6, train_n=96, val_n=32, test_n=32, val_every=3, seeds=[0])

# (row name, merge_adapters method, k as a multiple of RANK or None, its 3 settings)
WEIGHTS = [{"w": 0.5}, {"w": 0.75}, {"w": 1.0}]
SPARSE = [{"w": 1.0, "density": 0.3}, {"w": 1.0, "density": 0.7}, {"w": 0.75, "density": 0.5}]
LEGO = [{"w": 1.0, "output_norm": "mean"}, {"w": 1.0, "output_norm": "sum"},
        {"w": 0.75, "output_norm": "sum"}]
MERGES = [
    ("concat", "concat", None, WEIGHTS),
    ("PEFT cat", "peft-cat", None, WEIGHTS),
    ("PEFT linear", "peft-linear", None, WEIGHTS),
    ("PEFT ties", "peft-ties", None, SPARSE),
    ("PEFT dare_linear", "peft-dare_linear", None, SPARSE),
    ("PEFT dare_ties", "peft-dare_ties", None, SPARSE),
    ("PEFT magnitude_prune", "peft-magnitude_prune", None, SPARSE),
    *((f"PEFT svd k={m}r", "peft-svd", m, WEIGHTS) for m in (1, 2, 4)),
    *((f"LoRA-LEGO k={m}r", "lego", m, LEGO) for m in (1, 2, 4)),
]

NOTES = """\
Training: each task's LoRA and head train for the budget's steps at one learning rate,
3e-3, the rate the `variants` suite chose on validation for LoRA on MiniLM (no sweep
here: the suite compares merges of fixed adapters, and every merge method sees the same
five adapters per seed). The seed sets the adapters' init and data order, and
KMeans' random_state and DARE's drops. Merge time is the wall time of one
`lorakit.merge_adapters` call (PEFT's rows include building PEFT's stand-in model and
the export / import through PEFT's file layout); ranks are the merged adapter's rank.
Validation and test are fixed random subsets per task, the same for every row, so
differences between rows are paired. The goal figures: LoRA-LEGO's average minus the
best PEFT merge at the same merged rank (rank r: linear, ties, dare_linear, dare_ties,
magnitude_prune, svd k=r; 2r and 4r: svd at that rank), goal >= +1 point; and LoRA-LEGO's
average minus concatenation's, goal >= -3 points.
Sizing (2-core CPU, 1 torch thread): a LoRA step at batch 16 ~0.6 s (WordNet's batch 32
of half-length glosses about the same), so 5 tasks x 80 steps ~4 min per seed plus model
loading and validation; evaluation ~8 ms per item with the adapter unmerged (the quick
run measured ~15 ms with the machine's other core busy): per seed 13 merges x 3 settings
x 5 x 100 validation items plus 14 rows x 5 x 200 test items, ~33,500 items ~4.5 min;
merging itself is seconds. About 10 minutes a seed, 30 minutes in all.
"""


def load_tasks(budget: Budget) -> dict[str, dict]:
    """task -> {"train", "val", "test": tokenised items}."""
    from lorakit.domains.text.minilm import minilm
    from lorakit.domains.text.sentiment import sentiment
    from lorakit.domains.text.wordnet import wordnet

    from .sentence_classifier import encode
    from .variants_suite import _split

    _, tokenizer = minilm()
    domains = sentiment()
    raw = {d: domains[d] for d in SENTIMENT_TASKS}
    raw["wordnet"] = wordnet()
    return {t: {"train": encode(tokenizer, _split(raw[t]["train"], budget.train_n, 1),
                                MAX_LENGTH),
                "val": encode(tokenizer, _split(raw[t]["val"], budget.val_n, 2), MAX_LENGTH),
                "test": encode(tokenizer, _split(raw[t]["test"], budget.test_n, 3), MAX_LENGTH)}
            for t in TASKS}


def train_task(task: str, items: dict, budget: Budget, seed: int, out: Path):
    """One task's LoRA and head through `fit`; returns (adapter file, head state dict)."""
    import lightning.pytorch as pl

    from lorakit import LoRAConfig
    from lorakit.domains.text.minilm import minilm

    from .sentence_classifier import SentenceClassifier, fit_recorded, loader

    pl.seed_everything(seed, verbose=False)
    encoder, _ = minilm()
    run_dir = out / "runs" / f"{task}-seed{seed}"
    module = SentenceClassifier(encoder, LoRAConfig(rank=RANK, alpha=ALPHA, targets=TARGETS),
                                num_labels=LABELS[task], lr=budget.lr, output_dir=str(run_dir))
    module.train()      # MiniLM arrives in eval mode; train it with its dropout, as pre-trained
    batch = budget.batch * (2 if task == "wordnet" else 1)   # glosses are half as long
    fit_recorded(module, loader(items["train"], batch, seed=seed), loader(items["val"], 64),
                 budget.steps, budget.val_every, run_dir)
    path = module.adapters.save(out / "adapters" / f"{task}-seed{seed}.safetensors")
    return path, {k: v.detach().clone() for k, v in module.head.state_dict().items()}


class Scorer:
    """Accuracy of an adapter (a file or a merged one) on each task with that task's head,
    on one MiniLM encoder that adapters are attached to and detached from."""

    def __init__(self, heads: dict[str, dict], tasks: dict[str, dict]) -> None:
        from lorakit.domains.text.minilm import minilm

        from .sentence_classifier import SentenceClassifier

        self.encoder, _ = minilm()
        self.tasks = tasks
        self.modules = {}
        for task, head in heads.items():
            module = SentenceClassifier(self.encoder, None, num_labels=LABELS[task])
            module.head.load_state_dict(head)
            self.modules[task] = module.eval()

    @torch.no_grad()
    def __call__(self, adapter, split: str, tasks=TASKS) -> dict[str, float]:
        import lorakit

        from .sentence_classifier import accuracy, loader

        handle = (lorakit.load_adapter(self.encoder, adapter, name="scored")
                  if isinstance(adapter, (str, Path)) else adapter.load(self.encoder, "scored"))
        try:
            return {t: 100 * accuracy(self.modules[t], loader(self.tasks[t][split], 64))
                    for t in tasks}
        finally:
            handle.detach()


def merge_with(files: list[Path], method: str, k: int | None, setting: dict, seed: int):
    """One `merge_adapters` call; returns (merged adapter, seconds)."""
    from lorakit import merge_adapters

    options = {key: v for key, v in setting.items() if key != "w"}
    start = time.perf_counter()
    merged = merge_adapters(files, method=method, k=k, weights=[setting["w"]] * len(files),
                            seed=seed, **options)
    return merged, time.perf_counter() - start


def choose(scores: list[float]) -> int:
    """Index of the best validation average; the first (earliest listed) among ties."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def average(accs: dict[str, float]) -> float:
    return sum(accs.values()) / len(accs)


def run(out_dir, threads: int = 1, quick: bool = False, budget: Budget | None = None) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    budget = budget or (QUICK if quick else Budget())
    t_start = time.time()
    tasks = load_tasks(budget)
    per_seed: dict[int, dict] = {}
    for seed in budget.seeds:
        files, heads = {}, {}
        for task in TASKS:
            t0 = time.time()
            files[task], heads[task] = train_task(task, tasks[task], budget, seed, out)
            _say(f"seed {seed}: trained {task} ({time.time() - t0:.0f} s)")
        score = Scorer(heads, tasks)
        rows = {"single adapter (own task)": {
            "test": {t: score(files[t], "test", (t,))[t] for t in TASKS}, "rank": RANK,
            "seconds": None, "setting": {}}}
        inputs = [files[t] for t in TASKS]
        for name, method, mult, settings in MERGES:
            k = mult * RANK if mult else None
            vals, failed = [], None
            for setting in settings:
                try:
                    merged, _ = merge_with(inputs, method, k, setting, seed)
                except Exception as err:  # a PEFT type this PEFT lacks: reported, not fatal
                    failed = f"{type(err).__name__}: {err}"
                    break
                vals.append(average(score(merged, "val")))
            if failed:
                rows[name] = {"failed": failed}
                _say(f"seed {seed}: {name} failed: {failed}")
                continue
            best = settings[choose(vals)]
            merged, seconds = merge_with(inputs, method, k, best, seed)
            rows[name] = {"test": score(merged, "test"), "rank": merged.rank,
                          "seconds": seconds, "setting": best, "val": vals}
            _say(f"seed {seed}: {name} {best} val {max(vals):.1f} test "
                 f"{average(rows[name]['test']):.1f} (total {time.time() - t_start:.0f} s)")
        per_seed[seed] = rows
    table = summary_rows(per_seed)
    figures = goal_figures(table)
    figures["wall_s"] = time.time() - t_start
    plot_per_task(table, out / "per_task_accuracy.png")
    (out / "runs.json").write_text(json.dumps({str(s): r for s, r in per_seed.items()},
                                              indent=1, default=str))
    budget_note = (f"This run: {budget.steps} steps at lr {budget.lr:g}, batch {budget.batch} "
                   f"(wordnet {2 * budget.batch}), {budget.train_n} training / {budget.val_n} "
                   f"validation / {budget.test_n} test items per task, seeds {budget.seeds}.\n\n")
    return {"figures": figures, "rows": table, "notes": budget_note + NOTES}


def summary_rows(per_seed: dict[int, dict]) -> list[dict]:
    """One table row per merge: per-task and average test accuracy, mean ± SD over seeds."""
    from .validation_protocol import mean_sd

    names = list(next(iter(per_seed.values())))
    table = []
    for name in names:
        runs = [rows[name] for rows in per_seed.values()]
        done = [r for r in runs if "test" in r]
        row: dict = {"merge": name}
        if not done:
            row["failed"] = runs[0]["failed"]
            table.append(row)
            continue
        for t in TASKS:
            row[f"{t}_acc"] = mean_sd([r["test"][t] for r in done])[0]
        row["average_acc"], row["average_acc_sd"] = mean_sd([average(r["test"]) for r in done])
        row["merged_rank"] = done[0]["rank"]
        seconds = [r["seconds"] for r in done if r["seconds"] is not None]
        row["merge_s"] = mean_sd(seconds)[0] if seconds else None
        row["settings"] = "; ".join(json.dumps(r["setting"], separators=(",", ":"))
                                    for r in done)
        row["seeds"] = len(done)
        table.append(row)
    return table


def goal_figures(table: list[dict]) -> dict[str, float]:
    """The issue's goals as numbers: LoRA-LEGO minus the best PEFT merge at its rank, and
    LoRA-LEGO minus concatenation (points of average accuracy)."""
    by = {row["merge"]: row for row in table if "average_acc" in row}
    figures = {f"{_key(n)}_average_acc": r["average_acc"] for n, r in by.items()}
    same_rank = {1: ["PEFT linear", "PEFT ties", "PEFT dare_linear", "PEFT dare_ties",
                     "PEFT magnitude_prune", "PEFT svd k=1r"],
                 2: ["PEFT svd k=2r"], 4: ["PEFT svd k=4r"]}
    for m, peers in same_rank.items():
        lego = by.get(f"LoRA-LEGO k={m}r")
        peft = [by[p]["average_acc"] for p in peers if p in by]
        if lego is None:
            continue
        if peft:
            figures[f"lego_k{m}r_minus_best_peft_same_rank"] = lego["average_acc"] - max(peft)
        if "concat" in by:
            figures[f"lego_k{m}r_minus_concat"] = lego["average_acc"] - by["concat"]["average_acc"]
    return figures


def _key(name: str) -> str:
    return (name.lower().replace("lora-lego", "lego").replace("(own task)", "")
            .replace("=", "").strip().replace(" ", "_"))


def plot_per_task(table: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table if "average_acc" in r]
    groups = [*TASKS, "average"]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(15, 5))
    cmap = plt.get_cmap("tab20")
    for i, row in enumerate(rows):
        values = [row[f"{t}_acc"] for t in TASKS] + [row["average_acc"]]
        xs = [g + (i - len(rows) / 2 + 0.5) * width for g in range(len(groups))]
        ax.bar(xs, values, width, label=f"{row['merge']} (rank {row['merged_rank']})",
               color=cmap(i % 20))
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("test accuracy (%), mean over seeds")
    ax.set_title("Five MiniLM LoRAs merged into one: accuracy per task (own head per task)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _say(text: str) -> None:
    print(f"[merge suite] {text}", flush=True)


if __name__ == "__main__":
    from lorakit.reports.bench import suite_parser, write_suite_run

    a = suite_parser(__doc__, SUITE).parse_args()
    write_suite_run(SUITE, a, lambda: run(a.out, a.threads, a.quick))
