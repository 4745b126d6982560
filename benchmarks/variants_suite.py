"""Benchmark suite `variants`: every training method of the core on a real text base, with
the same protocol, in one run.

Base: all-MiniLM-L6-v2 (`lorakit.domains.text.minilm`), mean-pooled, with a linear head
(`benchmarks/sentence_classifier.py`), fitted through `AdapterModule` and
`lightning.Trainer.fit`. Data: the four-domain human-rated sentiment sentences
(`lorakit.domains.text.sentiment`): train on movie snippets, choose settings on the movie
validation split, test in-domain (movie test) and out of distribution (tweets, Amazon,
NYT test splits). Adapters: rank 8 (alpha 16) on the query and value projections of all
6 layers; the head trains in every row. Sequences cut at 64 tokens.

Rows: full fine-tuning, LoRA, rsLoRA, DoRA, LoRA-GA, LoRA-SB, FFA-LoRA, ALLoRA, LoRA-GGPO,
BA-LoRA. Columns: chosen learning rate (and the sweep's validation accuracies),
trainable parameters (adapter + head) and adapter parameters, median step time,
in-domain and OOD test accuracy (mean ± SD over seeds; OOD the mean of the three
domains, also per domain), and steps to reach LoRA's final validation loss.

Protocol (`benchmarks/validation_protocol.py`): each method runs a 4-value learning-rate
sweep at seed 0 (factors of ~3: 3e-4, 1e-3, 3e-3, 1e-2 for the adapters, 1e-5, 3e-5, 1e-4,
3e-4 for full fine-tuning), keeps the rate with the best final validation accuracy (ties: lower
validation loss), and that rate runs with seeds 0, 1, 2 (seed 0 is the sweep's own run).
The test splits are read only after every choice is made. LoRA-GA and LoRA-SB are set by
`lorakit.init_from_gradients` on 4 training batches before `fit` (LoRA-SB's `init_lr` is
the run's learning rate).

    run(out_dir, threads=1, quick=False) -> {"figures", "rows", "notes"}
    (+ accuracy_in_vs_ood.png, val_loss_curves.png, intruders.png)
    quick: every method, 1 seed, 1 learning rate, 10 steps, 400 training sentences.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

SUITE = "variants"
DOMAINS_OOD = ("tweets", "amazon", "nyt")
MAX_LENGTH = 64
RANK, ALPHA, TARGETS = 8, 16.0, ["*.query", "*.value"]
INIT_BATCHES = 4

# name, key, LoRAConfig fields (None: full fine-tuning)
METHODS = [
    ("full fine-tuning", "full", None),
    ("LoRA", "lora", {"method": "lora"}),
    ("rsLoRA", "rslora", {"method": "lora", "rslora": True}),
    ("DoRA", "dora", {"method": "dora"}),
    ("LoRA-GA", "lora_ga", {"method": "lora_ga"}),
    ("LoRA-SB", "lora_sb", {"method": "lora_sb"}),
    ("FFA-LoRA", "ffa_lora", {"method": "ffa_lora"}),
    ("ALLoRA", "allora", {"method": "allora"}),
    ("LoRA-GGPO", "ggpo", {"method": "ggpo"}),
    ("BA-LoRA", "balora", {"method": "balora"}),
]
GRADIENT_INIT = ("lora_ga", "lora_sb")


@dataclass
class Budget:
    steps: int = 60
    batch: int = 16
    train_n: int | None = None       # None: all 7,048 movie training sentences
    val_n: int = 256
    val_every: int = 10
    test_n: int = 300                # per domain
    adapter_lrs: list[float] = field(default_factory=lambda: [3e-4, 1e-3, 3e-3, 1e-2])
    full_lrs: list[float] = field(default_factory=lambda: [1e-5, 3e-5, 1e-4, 3e-4])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


QUICK = Budget(steps=10, train_n=400, val_n=64, val_every=5, test_n=64,
               adapter_lrs=[1e-3], full_lrs=[1e-4], seeds=[0])


@dataclass(frozen=True)
class Task:
    """One classification task of the suite: where its data come from, how many labels,
    which test split is in-domain and which are out of distribution."""
    name: str
    num_labels: int
    in_domain: str
    ood: tuple[str, ...]
    budget: Budget
    quick: Budget

    def splits(self) -> dict:
        """{"train", "val": [(text, label)], "test": {domain: [(text, label)]}}."""
        if self.name == "wordnet":
            from lorakit.domains.text.wordnet import wordnet

            data = wordnet()
            return {"train": data["train"], "val": data["val"], "test": {"wordnet": data["test"]}}
        from lorakit.domains.text.sentiment import sentiment

        data = sentiment()
        return {"train": data["movies"]["train"], "val": data["movies"]["val"],
                "test": {d: data[d]["test"] for d in (self.in_domain, *self.ood)}}


SENTIMENT = Task("sentiment", 2, "movies", DOMAINS_OOD, Budget(), QUICK)
# 45 classes of short glosses (16 tokens on average, 28 for movie snippets); every test
# gloss is in-domain
WORDNET = Task("wordnet", 45, "wordnet", (), Budget(test_n=1000),
               Budget(steps=10, batch=32, train_n=800, val_n=128, val_every=5, test_n=128,
                      adapter_lrs=[1e-3], full_lrs=[1e-4], seeds=[0]))

NOTES = """\
Sizing (2-core CPU, 1 torch thread): a LoRA step on MiniLM at batch 16, sequences of at
most 64 tokens (padded per batch; movie snippets average 28 tokens) was measured at
~0.6 s, full fine-tuning ~1.0 s, and a forward pass for evaluation ~10 ms per sentence in
length-sorted batches of 64. The ten methods cost ~12 LoRA steps per step together
(full FT ~1.6x, DoRA ~1.3x, LoRA-GGPO 2x: two passes). A method runs 4 sweep runs + 2
more seeds = 6 runs (seed 0 of the chosen rate is its sweep run), so 60 runs of 60 steps:
~6 x 60 x 0.6 s x 12 = 43 min training, validation of 256 sentences every 10 steps in
every run ~15 min, test (300 sentences x 4 domains x 30 runs) ~6 min, loading and
gradient inits ~4 min: about 70 minutes. The sweep has 4 values because an earlier,
interrupted run of a 3-value sweep (3e-4..3e-3; full FT 3e-5..3e-4) chose edge values on
validation (LoRA and rsLoRA the top, full fine-tuning the bottom); nothing of that run is
published. 60 steps x 16 = 960 sentences seen, under one epoch
of the 7,048: a short-budget comparison, which is the regime LoRA-GA's and LoRA-SB's
faster-convergence claims are about; the accuracies are not converged ones.
Validation and test use fixed random subsets (256 of the 1,008 validation sentences;
300 of each test split), the same for every method, so differences between rows are
paired. Steps to reach LoRA's final validation loss: the target is the mean over LoRA's
seeds of its loss at the last step; a run's count is the first validation step (every
10) at or below it, averaged over the seeds that reach it (`reached` says how many).
LoRA-GA and LoRA-SB also spend 4 batches of gradient before step 1 (not counted).
Parameter counts: `trainable_params` includes the 770 of the head; `adapter_params` and
the LoRA-SB ratio count the adapter alone. The intruder figure (`intruders.png`) counts,
over the 12 query/value matrices of the seed-0 run at the chosen rate, the top-10
singular vectors of the tuned matrix with max |cos| < 0.5 to every base singular vector
(`lorakit.compare_weights`).
"""


WORDNET_NOTES = """\
WordNet task (suite `variants-wordnet`): gloss -> lexicographer class (45 classes,
`lorakit.domains.text.wordnet`), the same ten rows, budget, sweep and seeds (60 steps of
batch 16, validation on a fixed 256 of the validation split), test on a fixed 1,000 of
the test split (in-domain only: no OOD columns and no OOD goals). The head has
384 x 45 + 45 = 17,325 parameters, not 770. 960 glosses seen of the 82,360, about 21 a
class: a short-budget comparison, far from converged. Glosses average 16 tokens against
the snippets' 28, so this task runs a little faster than the sentiment one.

"""


def _split(examples: list, n: int | None, seed: int) -> list:
    """A fixed random subset of n examples (all when n is None or larger)."""
    if n is None or n >= len(examples):
        return list(examples)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))
    return [examples[i] for i in order[:n].tolist()]


def load_data(budget: Budget, task: Task = SENTIMENT) -> tuple[dict, object]:
    """Tokenised train / val / per-domain test items and the tokenizer."""
    from lorakit.domains.text.minilm import minilm

    from .sentence_classifier import encode

    data = task.splits()
    _, tokenizer = minilm()
    items = {
        "train": encode(tokenizer, _split(data["train"], budget.train_n, 1), MAX_LENGTH),
        "val": encode(tokenizer, _split(data["val"], budget.val_n, 2), MAX_LENGTH),
        "test": {d: encode(tokenizer, _split(tests, budget.test_n, 3), MAX_LENGTH)
                 for d, tests in data["test"].items()},
    }
    return items, tokenizer


def train_one(key: str, fields: dict | None, lr: float, seed: int, items: dict,
              budget: Budget, out: Path, num_labels: int = 2):
    """One fit of one method at one learning rate and seed; returns the trained module."""
    import lightning.pytorch as pl

    from lorakit import LoRAConfig, init_from_gradients
    from lorakit.domains.text.minilm import minilm

    from .sentence_classifier import SentenceClassifier, fit_recorded, loader

    pl.seed_everything(seed, verbose=False)
    encoder, _ = minilm()
    config = None
    if fields is not None:
        config = LoRAConfig(rank=RANK, alpha=ALPHA, targets=TARGETS,
                            **({"init_lr": lr} if key == "lora_sb" else {}), **fields)
    run_dir = out / "runs" / f"{key}-lr{lr:g}-seed{seed}"
    module = SentenceClassifier(encoder, config, num_labels=num_labels, lr=lr,
                                output_dir=str(run_dir))
    train = loader(items["train"], budget.batch, seed=seed)
    # minilm() hands the encoder over in eval mode, and Lightning keeps each submodule's
    # mode: train it with its dropout on, as it was pre-trained (and as the papers' runs)
    module.train()
    if key in GRADIENT_INIT:
        init_batches = [b for _, b in zip(range(INIT_BATCHES), loader(
            items["train"], budget.batch, seed=seed + 1000))]
        init_from_gradients(module, module.adapters, init_batches, lambda m, b: m.loss(b))
    return fit_recorded(module, train, loader(items["val"], 64), budget.steps, budget.val_every,
                        run_dir)


def run_summary(module) -> dict:
    """What the protocol may look at: validation numbers, sizes, step time."""
    step, val_loss, val_acc = module.val_curve[-1]
    times = sorted(module.step_times[2:] or module.step_times)
    head = sum(p.numel() for p in module.head.parameters())
    trainable = sum(p.numel() for p in module.trainable_parameters())
    return {"val_loss": val_loss, "val_acc": val_acc, "steps": step,
            "curve": [(s, loss) for s, loss, _ in module.val_curve],
            "step_s": times[len(times) // 2], "trainable": trainable,
            "adapter_params": trainable - head}


def test_accuracy(module, items: dict) -> dict[str, float]:
    from .sentence_classifier import accuracy, loader

    return {d: accuracy(module, loader(tests, 64)) for d, tests in items["test"].items()}


def query_value_weights(module) -> dict[str, torch.Tensor]:
    """The 12 query/value weights as the model computes with them (adapters merged)."""
    if module.adapters is not None:
        module.adapters.merge()
    weights = {n.replace(".base.weight", ".weight"): t.detach().clone()
               for n, t in module.encoder.state_dict().items()
               if n.endswith(("query.weight", "value.weight", "query.base.weight",
                              "value.base.weight"))}
    if module.adapters is not None:
        module.adapters.unmerge()
    return weights


def run(out_dir, threads: int = 1, quick: bool = False, budget: Budget | None = None,
        task: Task = SENTIMENT) -> dict:
    from lorakit.domains.text.minilm import minilm

    from .validation_protocol import choose_lr, mean_sd, steps_to_reach

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    budget = budget or (task.quick if quick else task.budget)
    t_start = time.time()
    items, _ = load_data(budget, task)
    base_qv = query_value_weights_of(minilm()[0])

    results: dict[str, dict] = {}
    intruder_weights: dict[str, dict] = {}
    for name, key, fields in METHODS:
        lrs = budget.full_lrs if fields is None else budget.adapter_lrs
        seed0 = budget.seeds[0]
        sweep, modules = {}, {}
        for lr in lrs:
            t0 = time.time()
            modules[lr] = train_one(key, fields, lr, seed0, items, budget, out, task.num_labels)
            sweep[lr] = run_summary(modules[lr])
            _say(f"{name} lr {lr:g} seed {seed0}: val acc {sweep[lr]['val_acc']:.3f} "
                 f"loss {sweep[lr]['val_loss']:.3f} ({time.time() - t0:.0f} s, "
                 f"total {time.time() - t_start:.0f} s)")
        lr = choose_lr(sweep)
        seeds = {seed0: (sweep[lr], test_accuracy(modules[lr], items))}
        if key in ("full", "lora", "rslora"):
            intruder_weights[name] = query_value_weights(modules[lr])
        del modules
        for seed in budget.seeds[1:]:
            t0 = time.time()
            module = train_one(key, fields, lr, seed, items, budget, out, task.num_labels)
            seeds[seed] = (run_summary(module), test_accuracy(module, items))
            _say(f"{name} lr {lr:g} seed {seed}: val acc {seeds[seed][0]['val_acc']:.3f} "
                 f"({time.time() - t0:.0f} s, total {time.time() - t_start:.0f} s)")
        results[key] = {"name": name, "lr": lr, "sweep": sweep, "seeds": seeds}
        _say(f"{name}: lr {lr:g}, test {_fmt_tests(seeds)}")

    lora_final = mean_sd([s["val_loss"] for s, _ in results["lora"]["seeds"].values()])[0]
    rows = [method_row(r, lora_final, mean_sd, steps_to_reach, task) for r in results.values()]
    figures = goal_figures({r["key"]: r for r in rows}, bool(task.ood))
    figures.update(paired_differences(_jsonable(results), task))
    intruders = intruder_counts(base_qv, intruder_weights)
    figures.update({f"intruders_{k}": v for k, v in intruders.items()})
    figures["lora_final_val_loss"] = lora_final
    figures["wall_s"] = time.time() - t_start
    if task.ood:
        plot_accuracy(rows, out / "accuracy_in_vs_ood.png")
    else:
        plot_in_domain(rows, task, out / "accuracy.png")
    plot_curves(results, lora_final, out / "val_loss_curves.png")
    if intruders:
        plot_intruders(intruders, out / "intruders.png")
    (out / "runs.json").write_text(json.dumps(_jsonable(results), indent=1))
    budget_note = (f"Task: {task.name} ({task.num_labels} classes). This run: "
                   f"{budget.steps} steps, batch {budget.batch}, "
                   f"{len(items['train'])} training sentences, {len(items['val'])} validation, "
                   f"{budget.test_n} test per domain, learning rates {budget.adapter_lrs} "
                   f"(full FT {budget.full_lrs}), seeds {budget.seeds}.\n\n")
    for row in rows:
        row.pop("key")
    notes = WORDNET_NOTES + NOTES if task.name == "wordnet" else NOTES
    return {"figures": figures, "rows": rows, "notes": budget_note + notes}


def run_wordnet(out_dir, threads: int = 1, quick: bool = False) -> dict:
    """Suite `variants-wordnet`: the same rows and protocol on the 45-class WordNet task."""
    return run(out_dir, threads, quick, task=WORDNET)


def query_value_weights_of(encoder) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in encoder.state_dict().items()
            if n.endswith(("query.weight", "value.weight"))}


def method_row(result: dict, lora_final: float, mean_sd, steps_to_reach,
               task: Task = SENTIMENT) -> dict:
    seeds = list(result["seeds"].values())
    first = seeds[0][0]
    ind = [100 * t[task.in_domain] for _, t in seeds]
    ood_per = {d: [100 * t[d] for _, t in seeds] for d in task.ood}
    reach = [steps_to_reach(s["curve"], lora_final) for s, _ in seeds]
    reached = [r for r in reach if r is not None]
    row = {"method": result["name"], "key": _key_of(result),
           "lr": result["lr"],
           "sweep_val_acc": "; ".join(f"{lr:g}: {100 * s['val_acc']:.1f}"
                                      for lr, s in result["sweep"].items()),
           "trainable_params": first["trainable"], "adapter_params": first["adapter_params"],
           "step_ms": 1000 * mean_sd([s["step_s"] for s, _ in seeds])[0]}
    row["in_domain_acc"], row["in_domain_acc_sd"] = mean_sd(ind)
    if task.ood:
        row["ood_acc"], row["ood_acc_sd"] = mean_sd(
            [sum(ood_per[d][i] for d in task.ood) / len(task.ood) for i in range(len(seeds))])
    for d in task.ood:
        row[f"{d}_acc"] = mean_sd(ood_per[d])[0]
    row["val_loss"] = mean_sd([s["val_loss"] for s, _ in seeds])[0]
    row["steps_to_lora_final_val_loss"] = mean_sd(reached)[0] if reached else None
    row["reached"] = f"{len(reached)}/{len(seeds)}"
    return row


def _key_of(result: dict) -> str:
    return next(k for n, k, _ in METHODS if n == result["name"])


def goal_figures(by: dict[str, dict], ood: bool = True) -> dict[str, float]:
    """The issue's goals, each as one number (accuracies in points); the out-of-distribution
    ones only for a task with OOD test domains."""
    lora = by["lora"]
    figures = {}
    ga, base = by["lora_ga"]["steps_to_lora_final_val_loss"], lora["steps_to_lora_final_val_loss"]
    if ga is not None and base:
        figures["lora_ga_steps_to_lora_final_val_loss_ratio"] = ga / base
    figures["lora_sb_in_domain_acc_minus_lora"] = by["lora_sb"]["in_domain_acc"] - lora["in_domain_acc"]
    figures["lora_sb_adapter_param_ratio"] = (by["lora_sb"]["adapter_params"]
                                              / lora["adapter_params"])
    if ood:
        figures["lora_sb_ood_acc_minus_lora"] = by["lora_sb"]["ood_acc"] - lora["ood_acc"]
        for key in ("allora", "ggpo", "balora"):
            figures[f"{key}_ood_acc_minus_lora"] = by[key]["ood_acc"] - lora["ood_acc"]
    for key, row in by.items():
        figures[f"{key}_in_domain_acc"] = row["in_domain_acc"]
        if ood:
            figures[f"{key}_ood_acc"] = row["ood_acc"]
        figures[f"{key}_step_time_vs_lora"] = row["step_ms"] / lora["step_ms"]
    return figures


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}   # Student's t, 95 % two-sided


def paired_differences(results: dict, task: Task = SENTIMENT) -> dict[str, float]:
    """Each goal's difference to LoRA paired by seed (same seed: same data order and head
    init), in points: the mean and a 95 % t-interval over the seeds both rows ran.

    `results` is the suite's per-method record (`runs.json`'s layout: key -> {"seeds":
    {seed: {"test": {domain: accuracy}}}}), so a finished run's intervals can be
    recomputed from its `runs.json` (`--paired`)."""
    from .validation_protocol import mean_sd

    def score(record: dict, seed, ood: bool) -> float:
        test = record["seeds"][seed]["test"]
        if not ood:
            return 100 * test[task.in_domain]
        return 100 * sum(test[d] for d in task.ood) / len(task.ood)

    goals = [("lora_sb", False)] + [(k, True) for k in ("lora_sb", "allora", "ggpo", "balora")
                                    if task.ood]
    figures = {}
    lora = results["lora"]
    for key, ood in goals:
        seeds = [s for s in results[key]["seeds"] if s in lora["seeds"]]
        diffs = [score(results[key], s, ood) - score(lora, s, ood) for s in seeds]
        mean, sd = mean_sd(diffs)
        half = T_975.get(len(diffs) - 1, 1.96) * sd / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
        name = f"{key}_{'ood' if ood else 'in_domain'}_acc_minus_lora_paired"
        figures[name] = mean
        figures[f"{name}_ci95_low"], figures[f"{name}_ci95_high"] = mean - half, mean + half
    return figures


def intruder_counts(base_qv: dict, tuned: dict[str, dict]) -> dict[str, int]:
    from lorakit import compare_weights

    keys = {"full fine-tuning": "full", "LoRA": "lora", "rsLoRA": "rslora"}
    return {keys[name]: compare_weights(base_qv, w)["total_intruders"]
            for name, w in tuned.items()}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy(rows: list[dict], png: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5.5))
    for row in rows:
        ax.errorbar(row["in_domain_acc"], row["ood_acc"], xerr=row["in_domain_acc_sd"],
                    yerr=row["ood_acc_sd"], fmt="o", capsize=3)
        ax.annotate(row["method"], (row["in_domain_acc"], row["ood_acc"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("in-domain accuracy, movie test (%)")
    ax.set_ylabel("OOD accuracy, mean of tweets / Amazon / NYT (%)")
    ax.set_title("MiniLM sentiment: mean ± SD over seeds")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def plot_in_domain(rows: list[dict], task: Task, png: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = [row["method"] for row in rows]
    ax.barh(names, [row["in_domain_acc"] for row in rows],
            xerr=[row["in_domain_acc_sd"] for row in rows], capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel(f"test accuracy, {task.name} ({task.num_labels} classes, %)")
    ax.set_title("MiniLM: mean ± SD over seeds")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def plot_curves(results: dict, lora_final: float, png: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in results.values():
        curves = [s["curve"] for s, _ in r["seeds"].values()]
        steps = [s for s, _ in curves[0]]
        mean = [sum(c[i][1] for c in curves) / len(curves) for i in range(len(steps))]
        ax.plot(steps, mean, marker=".", label=r["name"])
    ax.axhline(lora_final, color="k", ls=":", lw=1, label="LoRA's final")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (movies, mean over seeds)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def plot_intruders(counts: dict[str, int], png: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.bar(list(counts), list(counts.values()))
    ax.set_ylabel("intruder dimensions (12 q/v matrices, top 10)")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _fmt_tests(seeds: dict) -> str:
    tests = [t for _, t in seeds.values()]
    return ", ".join(f"{d} {100 * sum(t[d] for t in tests) / len(tests):.1f}" for d in tests[0])


def _jsonable(results: dict) -> dict:
    return {k: {"name": r["name"], "lr": r["lr"], "sweep": {str(lr): s for lr, s in r["sweep"].items()},
                "seeds": {str(seed): {"val": s, "test": t} for seed, (s, t) in r["seeds"].items()}}
            for k, r in results.items()}


def _say(text: str) -> None:
    print(f"[variants suite] {text}", flush=True)


if __name__ == "__main__":
    from lorakit.reports.bench import suite_parser, write_suite_run

    p = suite_parser(__doc__, SUITE)
    p.add_argument("--task", choices=["sentiment", "wordnet"], default="sentiment")
    p.add_argument("--paired", metavar="RUNS_JSON",
                   help="print the paired differences to LoRA of a finished run's runs.json "
                        "and exit")
    a = p.parse_args()
    task = WORDNET if a.task == "wordnet" else SENTIMENT
    if a.paired:
        print(json.dumps(paired_differences(json.loads(Path(a.paired).read_text()), task),
                         indent=1))
        raise SystemExit(0)
    write_suite_run(SUITE if task is SENTIMENT else f"{SUITE}-{task.name}", a,
                    lambda: run(a.out, a.threads, a.quick, task=task))
