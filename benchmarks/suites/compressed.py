"""Benchmark suite `compressed`: LoRA on quantized and pruned bases, every contender against
QLoRA, side by side in one run.

Two real bases and tasks, each contender fitted through `AdapterModule` and
`lightning.Trainer.fit`:

- **SmolLM2-135M** (`lorakit.domains.text.smollm2`), language modelling on Jane Austen
  (`lorakit.domains.text.austen`): train on chunks of the four training novels, choose
  the learning rate on Northanger Abbey's perplexity, test on Persuasion's. Adapters and
  quantization on all seven projections of the 30 layers (210 matrices).
- **MiniLM** (`lorakit.domains.text.minilm`, mean-pooled + linear head,
  `common/sentence_classifier.py`), the four-domain sentiment task of the `variants`
  suite: train on movie snippets, choose on the movie validation split, test in-domain
  and out of distribution (tweets, Amazon, NYT). Adapters and quantization on every
  Linear of the 6 layers (36 matrices); the head trains in every row.

Each contender runs in a fresh process (`--worker`), so its peak resident memory is its
own: `peak_train_mb` is the peak RSS during `fit` above the RSS once the base is built
and compressed (the runtime and the data not counted). `base_mb` is the bytes of every
base weight as held (a quantized matrix at its codes, scales and zero points, as the
library stores them), `adapted_bits` the bits per weight of the adapted matrices alone.

Protocol: every contender gets the same learning-rate sweep (`Budget.lrs`), the same
steps, batches and seed; the rate is chosen on validation (`validation_protocol
.choose_lr`: accuracy, ties to the lower loss; for the language model the loss alone);
the test split is read once, after the choice.

    run(out_dir, threads=1, quick=False) -> {"figures", "rows", "notes"}
    (+ quality_vs_memory.png)
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..common.memory import reset_peak_rss, rss_mb
from ..common.sentence_classifier import RecordingModule

SUITE = "compressed"
LM_TARGETS = ["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj", "*.gate_proj", "*.up_proj",
              "*.down_proj"]
MINILM_TARGETS = ["*.query", "*.key", "*.value", "*.dense"]
RANK, ALPHA = 8, 16.0
DOMAINS_OOD = ("tweets", "amazon", "nyt")
MAX_LENGTH = 64


@dataclass
class Budget:
    lm_steps: int = 24
    lm_batch: int = 4
    lm_length: int = 64              # training chunks
    lm_eval_length: int = 128        # validation / test chunks
    lm_val_chunks: int = 16          # of Northanger Abbey
    lm_test_chunks: int = 32         # of Persuasion
    lm_lrs: list[float] = field(default_factory=lambda: [3e-4, 1e-3])
    cls_steps: int = 60
    cls_batch: int = 16
    cls_val_n: int = 256
    cls_test_n: int = 300            # per domain
    cls_lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3])
    seed: int = 0


QUICK = Budget(lm_steps=2, lm_batch=2, lm_val_chunks=2, lm_test_chunks=2, lm_lrs=[1e-3],
               cls_steps=3, cls_batch=4, cls_val_n=16, cls_test_n=16, cls_lrs=[1e-3])


# --- what a contender is -----------------------------------------------------------------
@dataclass
class Setup:
    """A compressed base, ready to train: the model that trains, what trains on it (a
    LoRAConfig to attach, or adapters already attached), Lightning callbacks, and how the
    trained module becomes the model that is evaluated (default: itself)."""
    model: torch.nn.Module
    adapter: object                      # LoRAConfig | Adapters
    callbacks: list = field(default_factory=list)
    finish: Callable | None = None       # finish(module) -> model to evaluate, or None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Contender:
    name: str
    key: str
    prepare: Callable                    # prepare(base, targets, context) -> Setup
    tasks: tuple[str, ...] = ("austen", "sentiment")


def lora_config(targets: list[str], **fields):
    from lorakit import LoRAConfig

    return LoRAConfig(rank=RANK, alpha=ALPHA, targets=targets, **fields)


def fp32_lora(base, targets, context) -> Setup:
    return Setup(base, lora_config(targets))


def qlora(scheme: str):
    def prepare(base, targets, context) -> Setup:
        from lorakit.adapters.targets import find_targets
        from lorakit.layers.quantized import QuantizedLinear

        for path, module in find_targets(base, targets).items():
            parent, _, leaf = path.rpartition(".")
            setattr(base.get_submodule(parent) if parent else base, leaf,
                    QuantizedLinear.from_linear(module, scheme))
        return Setup(base, lora_config(targets), info={"scheme": scheme})
    return prepare


CONTENDERS = [
    Contender("LoRA (fp32 base)", "lora", fp32_lora),
    Contender("QLoRA nf4", "qlora_nf4", qlora("nf4")),
    Contender("QLoRA int4", "qlora_int4", qlora("int4")),
    Contender("QLoRA int3", "qlora_int3", qlora("int3")),
]


# --- sizes -------------------------------------------------------------------------------
def base_bytes(model: torch.nn.Module, targets: list[str]) -> dict:
    """Bytes of every base weight as held, and bits per weight of the adapted matrices."""
    from lorakit.layers import LoRALayer
    from lorakit.layers.quantized import QuantizedLinear

    total = adapted_bytes = adapted_numel = 0
    seen = set()
    for module in model.modules():
        base = module.base if isinstance(module, LoRALayer) else module
        if isinstance(base, QuantizedLinear):
            seen.update(id(t) for t in base.inner.parameters())
            seen.update(id(t) for t in base.inner.buffers())
            adapted_bytes += base.nbytes()
            adapted_numel += base.in_features * base.out_features
            total += base.nbytes() + (0 if base.bias is None else base.bias.numel() * 4)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if id(tensor) in seen or ".variants." in name:
            continue
        nbytes = tensor.numel() * tensor.element_size()
        total += nbytes
        if isinstance_target(name, targets):
            adapted_bytes += nbytes
            adapted_numel += tensor.numel()
    return {"base_mb": total / 2**20,
            "adapted_bits": 8 * adapted_bytes / adapted_numel if adapted_numel else math.nan}


def isinstance_target(name: str, targets: list[str]) -> bool:
    """A parameter name `<module>.weight` (or `<module>.base.weight`) of an adapted module."""
    from fnmatch import fnmatchcase

    if not name.endswith(".weight"):
        return False
    module = name[:-len(".weight")].removesuffix(".base")
    return any(fnmatchcase(module, t) for t in targets)


# --- the language-model task --------------------------------------------------------------
class LanguageModel(RecordingModule):
    """A causal LM fitted on next-token loss; `evaluate` gives (loss, 0, tokens)."""

    def __init__(self, lm, adapter, lr: float, output_dir: str | None) -> None:
        super().__init__(lr=lr, output_dir=output_dir)
        self.lm = lm
        self.attach_adapters(lm, adapter)

    def loss(self, batch: dict) -> torch.Tensor:
        ids = batch["input_ids"]
        logits = self.lm(input_ids=ids).logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.loss(batch)

    def evaluate(self, batch: dict) -> tuple[torch.Tensor, int, int]:
        return self.loss(batch), 0, batch["input_ids"].shape[0]


def chunk_loader(chunks: torch.Tensor, batch: int, seed: int | None = None):
    from torch.utils.data import DataLoader

    items = [{"input_ids": row} for row in chunks]
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return DataLoader(items, batch_size=batch, shuffle=seed is not None, generator=generator)


def austen_data(budget: Budget, tokenizer) -> dict:
    from lorakit.domains.text.austen import austen

    from ..common.prompt_classifier import text_chunks

    text = austen()
    return {"train": text_chunks(tokenizer, text["train"], budget.lm_steps * budget.lm_batch,
                                 budget.lm_length),
            "val": text_chunks(tokenizer, text["val"], budget.lm_val_chunks,
                               budget.lm_eval_length),
            "test": text_chunks(tokenizer, text["test"], budget.lm_test_chunks,
                                budget.lm_eval_length)}


def fit(module: RecordingModule, train, val, steps: int, callbacks: list, run_dir: Path) -> dict:
    """`Trainer.fit` for `steps` steps, validating at the end; peak RSS during fit."""
    import lightning.pytorch as pl

    trainer = pl.Trainer(max_steps=steps, val_check_interval=steps, check_val_every_n_epoch=None,
                         num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, default_root_dir=str(run_dir),
                         callbacks=callbacks)
    before = rss_mb("VmRSS")
    reset_peak_rss()
    trainer.fit(module, train, val)
    peak = rss_mb() - before
    if not module.val_curve or module.val_curve[-1][0] != module.global_step:
        trainer.validate(module, val, verbose=False)
    times = sorted(module.step_times[2:] or module.step_times)
    step, loss, acc = module.val_curve[-1]
    return {"val_loss": loss, "val_acc": acc, "steps": step, "peak_train_mb": peak,
            "step_s": times[len(times) // 2]}


def austen_run(contender: Contender, lr: float, budget: Budget, data: dict, out: Path):
    import lightning.pytorch as pl

    from lorakit.domains.text.smollm2 import smollm2

    pl.seed_everything(budget.seed, verbose=False)
    lm, _ = smollm2()
    lm.config.use_cache = False
    setup = contender.prepare(lm, LM_TARGETS, {"task": "austen", "data": data})
    sizes = base_bytes(setup.model, LM_TARGETS)
    module = LanguageModel(setup.model, setup.adapter, lr, str(out))
    module.train()
    summary = fit(module, chunk_loader(data["train"], budget.lm_batch, seed=budget.seed),
                  chunk_loader(data["val"], 8), budget.lm_steps, setup.callbacks, out)
    summary["val_ppl"] = math.exp(summary["val_loss"])
    evaluated = setup.finish(module) if setup.finish else module.lm
    return summary | sizes | setup.info, evaluated


def austen_worker(contender: Contender, budget: Budget, out: Path) -> dict:
    from lorakit.domains.text.smollm2 import smollm2

    from ..common.prompt_classifier import perplexity
    from ..common.validation_protocol import choose_lr

    _, tokenizer = smollm2()
    data = austen_data(budget, tokenizer)
    sweep, models = {}, {}
    for lr in budget.lm_lrs:
        t0 = time.time()
        sweep[lr], models[lr] = austen_run(contender, lr, budget, data, out / f"lr{lr:g}")
        _say(f"austen {contender.name} lr {lr:g}: val ppl {sweep[lr]['val_ppl']:.2f} "
             f"({time.time() - t0:.0f} s)")
    lr = choose_lr(sweep)
    model = models[lr]
    return {"task": "austen", "contender": contender.name, "key": contender.key, "lr": lr,
            **sweep[lr], "sweep": {str(k): v["val_ppl"] for k, v in sweep.items()},
            "test_ppl": perplexity(model, data["test"])}


# --- the classification task --------------------------------------------------------------
def sentiment_worker(contender: Contender, budget: Budget, out: Path) -> dict:
    import lightning.pytorch as pl

    from lorakit.domains.text.minilm import minilm
    from lorakit.domains.text.sentiment import sentiment

    from ..common.sentence_classifier import SentenceClassifier, accuracy, encode, loader
    from ..common.subset import subset
    from ..common.validation_protocol import choose_lr

    _, tokenizer = minilm()
    data = sentiment()
    train = encode(tokenizer, data["movies"]["train"], MAX_LENGTH)
    val = encode(tokenizer, subset(data["movies"]["val"], budget.cls_val_n, 2), MAX_LENGTH)
    tests = {d: encode(tokenizer, subset(data[d]["test"], budget.cls_test_n, 3), MAX_LENGTH)
             for d in ("movies", *DOMAINS_OOD)}

    def one(lr: float):
        pl.seed_everything(budget.seed, verbose=False)
        encoder, _ = minilm()
        setup = contender.prepare(encoder, MINILM_TARGETS, {"task": "sentiment"})
        sizes = base_bytes(setup.model, MINILM_TARGETS)
        module = SentenceClassifier(setup.model, setup.adapter, lr=lr,
                                    output_dir=str(out / f"lr{lr:g}"))
        module.train()
        summary = fit(module, loader(train, budget.cls_batch, seed=budget.seed),
                      loader(val, 64), budget.cls_steps, setup.callbacks, out / f"lr{lr:g}")
        if setup.finish:
            module.encoder = setup.finish(module)
        return summary | sizes | setup.info, module

    sweep, modules = {}, {}
    for lr in budget.cls_lrs:
        sweep[lr], modules[lr] = one(lr)
        _say(f"sentiment {contender.name} lr {lr:g}: val acc {sweep[lr]['val_acc']:.3f}")
    lr = choose_lr(sweep)
    test = {d: accuracy(modules[lr], loader(items, 64)) for d, items in tests.items()}
    return {"task": "sentiment", "contender": contender.name, "key": contender.key, "lr": lr,
            **sweep[lr], "sweep": {str(k): v["val_acc"] for k, v in sweep.items()},
            "test_acc": test["movies"],
            "ood_acc": sum(test[d] for d in DOMAINS_OOD) / len(DOMAINS_OOD), "tests": test}


WORKERS = {"austen": austen_worker, "sentiment": sentiment_worker}


def contender_named(key: str) -> Contender:
    for contender in CONTENDERS:
        if contender.key == key:
            return contender
    raise KeyError(f"no contender {key!r}; the suite has {', '.join(c.key for c in CONTENDERS)}")


# --- the run ---------------------------------------------------------------------------------
def run_worker(task: str, key: str, budget: Budget, threads: int, out: Path) -> dict:
    """One contender on one task in a fresh process (its own peak memory)."""
    out.mkdir(parents=True, exist_ok=True)
    budget_file = out / "budget.json"
    budget_file.write_text(json.dumps(asdict(budget)))
    result = out / "result.json"
    cmd = [sys.executable, "-m", "lorakit.benchmarks.suites.compressed", "--worker", task, key,
           "--budget", str(budget_file), "--threads", str(threads), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not result.exists():
        tail = (proc.stderr or proc.stdout)[-1500:]
        return {"task": task, "key": key, "contender": contender_named(key).name,
                "error": f"worker exit {proc.returncode}: {tail}"}
    row = json.loads(result.read_text())
    row["seconds"] = time.time() - t0
    return row


def run(out_dir, threads: int = 1, quick: bool = False, budget: Budget | None = None,
        only: list[str] | None = None) -> dict:
    budget = budget or (QUICK if quick else Budget())
    out = Path(out_dir)
    rows = []
    for task in WORKERS:
        for contender in CONTENDERS:
            if task not in contender.tasks or (only and contender.key not in only):
                continue
            row = run_worker(task, contender.key, budget, threads, out / "runs" / task /
                             contender.key)
            _say(f"{task} {contender.name}: " + (row.get("error", "")[-300:] or
                 ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float))))
            rows.append(row)
    figures = goal_figures(rows)
    plot_quality_vs_memory(rows, out / "quality_vs_memory.png")
    return {"figures": figures, "rows": rows, "notes": notes(budget)}


def _row(rows: list[dict], task: str, key: str) -> dict | None:
    return next((r for r in rows if r["task"] == task and r["key"] == key
                 and "error" not in r), None)


def goal_figures(rows: list[dict]) -> dict[str, float]:
    """Each row's quality and memory as flat figures, and each against QLoRA nf4."""
    figures: dict[str, float] = {}
    for r in rows:
        if "error" in r:
            continue
        quality = "test_ppl" if r["task"] == "austen" else "test_acc"
        prefix = f"{r['task']}_{r['key']}"
        figures[f"{prefix}_{quality}"] = r[quality]
        figures[f"{prefix}_base_mb"] = r["base_mb"]
        figures[f"{prefix}_peak_train_mb"] = r["peak_train_mb"]
        figures[f"{prefix}_step_s"] = r["step_s"]
        reference = _row(rows, r["task"], "qlora_nf4")
        if reference and r["key"] != "qlora_nf4":
            figures[f"{prefix}_{quality}_minus_qlora_nf4"] = r[quality] - reference[quality]
            figures[f"{prefix}_step_s_vs_qlora_nf4"] = r["step_s"] / reference["step_s"]
    return figures


def plot_quality_vs_memory(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in WORKERS if any(r["task"] == t and "error" not in r for r in rows)]
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        quality = "test_ppl" if task == "austen" else "test_acc"
        for r in rows:
            if r["task"] != task or "error" in r:
                continue
            ax.scatter(r["base_mb"], r[quality])
            ax.annotate(r["contender"], (r["base_mb"], r[quality]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("base weights held (MB)")
        ax.set_ylabel("Persuasion perplexity (lower is better)" if task == "austen"
                      else "movie test accuracy")
        ax.set_title("SmolLM2-135M, Austen" if task == "austen" else "MiniLM, sentiment")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def notes(budget: Budget) -> str:
    return (f"Budget: {asdict(budget)}. Rank {RANK}, alpha {ALPHA:g}. SmolLM2 targets "
            f"{LM_TARGETS}, MiniLM targets {MINILM_TARGETS} (the pooler's dense too where the "
            "encoder has one). One seed: differences of a point of accuracy or a few tenths "
            "of perplexity are within seed noise.")


def _say(text: str) -> None:
    print(f"[compressed suite] {text}", flush=True)


def _options(parser) -> None:
    parser.add_argument("--only", nargs="+", metavar="KEY",
                        help="run only these contenders (keys: "
                             + ", ".join(c.key for c in CONTENDERS) + ")")
    parser.add_argument("--worker", nargs=2, metavar=("TASK", "KEY"),
                        help="internal: one contender on one task in this process")
    parser.add_argument("--budget", type=Path, help="internal: the worker's budget (JSON)")


def _worker(args) -> bool:
    if not args.worker:
        return False
    task, key = args.worker
    torch.set_num_threads(args.threads)
    budget = Budget(**json.loads(args.budget.read_text()))
    row = WORKERS[task](contender_named(key), budget, Path(args.out))
    (Path(args.out) / "result.json").write_text(json.dumps(row, indent=1))
    return True


if __name__ == "__main__":
    from lorakit.benchmarks.common.command_line import suite_main

    suite_main(SUITE, __doc__, run, options=_options,
               keywords=lambda a: {"only": a.only}, worker=_worker)
