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
    trains: bool = True                  # False: the base evaluated as it is (a reference)
    on_request: tuple[str, ...] = ()     # tasks it runs on only when `--only` names it


def lora_config(targets: list[str], **fields):
    from lorakit import LoRAConfig

    return LoRAConfig(rank=RANK, alpha=ALPHA, targets=targets, **fields)


def fp32_lora(base, targets, context) -> Setup:
    return Setup(base, lora_config(targets))


def quantize_targets(model, targets: list[str], scheme: str) -> dict:
    """`lorakit.quantize` on the adapted matrices (the heads stay in full precision, as
    QLoRA keeps them); what it left unquantized, and why."""
    import lorakit

    return lorakit.quantize(model, scheme, targets=targets).kept


def qlora(scheme: str, requantize: bool = False):
    """QLoRA; `requantize`: evaluated merged into its base and quantized again (what a
    QLoRA user deploys as one quantized model: L4Q's baseline)."""
    def prepare(base, targets, context) -> Setup:
        kept = quantize_targets(base, targets, scheme)

        def merged(module):
            module.adapters.merge(requantize=True)
            return getattr(module, context["attr"])
        return Setup(base, lora_config(targets), finish=merged if requantize else None,
                     info={"scheme": scheme, "kept": kept})
    return prepare


def loftq_start(scheme: str):
    def prepare(base, targets, context) -> Setup:
        from lorakit.compress.loftq import loftq

        adapters, parts = loftq(base, targets, rank=RANK, spec=scheme, iterations=5,
                                alpha=ALPHA, progress=False)
        errors = [d.error for d in parts.values()]
        return Setup(base, adapters, info={"scheme": scheme,
                                           "init_error": sum(errors) / len(errors)})
    return prepare


# g128 only where it divides a matrix's inputs (MiniLM's 384 and 1536, SmolLM2's 1536)
LQ_CANDIDATES = ("int2-g64", "int2-g128", "int3-g64", "int3-g128", "int4-g64", "int4-g128",
                 "nf4-g64", "int8-g64")
LQ_ITERATIONS = 3


def lq_lora_start(budget_bits: float):
    """LQ-LoRA at an average of `budget_bits` storage bits per adapted weight; the
    candidate table is computed once per task and shared by every budget's worker."""
    def prepare(base, targets, context) -> Setup:
        from lorakit.compress.lq_lora import candidate_table, lq_lora

        table_file = context["shared"] / "lq_lora_table.json"
        if table_file.exists():
            table = json.loads(table_file.read_text())
        else:
            table = candidate_table(base, targets, RANK, LQ_CANDIDATES,
                                    iterations=LQ_ITERATIONS, progress=False)
            table_file.write_text(json.dumps(table))
        adapters, report = lq_lora(base, targets, RANK, budget_bits, LQ_CANDIDATES,
                                   iterations=LQ_ITERATIONS, alpha=ALPHA, progress=False,
                                   table=table)
        from lorakit.layers.quantized import QuantSpec

        configs: dict[str, int] = {}
        for m in report.matrices:
            configs[m.config] = configs.get(m.config, 0) + 1
        numel = sum(m.numel for m in report.matrices)
        code_bits = sum(QuantSpec.parse(m.config).bits * m.numel for m in report.matrices)
        return Setup(base, adapters, info={"budget_bits": budget_bits, "configs": configs,
                                           "lq_average_bits": report.average_bits,
                                           "code_bits": code_bits / numel})
    return prepare


def l4q(bits: int):
    """L4Q trains on the full-precision base; what is evaluated is its export, the merged
    and linearly quantized model, loaded into a fresh base without lorakit's adapter."""
    def prepare(base, targets, context) -> Setup:
        import tempfile

        from lorakit import L4QOptions
        from lorakit.compress.l4q import export_l4q
        from lorakit.compress.l4q_format import load_l4q_state

        config = lora_config(targets, method="l4q", l4q=L4QOptions(bits=bits, group_size=64))
        info = {"scheme": f"int{bits}-g64 (L4Q export)"}

        def finish(module):
            model = module.lm if hasattr(module, "lm") else module.encoder
            with tempfile.TemporaryDirectory() as tmp:
                path = export_l4q(model, module.adapters, tmp)
                info["export_mb"] = path.stat().st_size / 2**20
                fresh = context["fresh_base"]()
                fresh.load_state_dict(load_l4q_state(path))
            return fresh
        return Setup(base, config, finish=finish, info=info)
    return prepare


def iterative_pruning(criterion: str, ratio: float):
    """Structured pruning during fine-tuning on LoRAPrune's cubic schedule, with the named
    importance (the same schedule for every criterion)."""
    def prepare(base, targets, context) -> Setup:
        from lorakit.compress.prune import PruneSpec, size
        from lorakit.compress.prune_callback import IterativePruning

        steps = context["steps"]
        callback = IterativePruning(PruneSpec(ratio=ratio), criterion=criterion,
                                    every=max(1, steps // 6), start=0,
                                    end=max(2, (2 * steps) // 3), model_attr=context["attr"])
        params_before = size(base)[0]
        info = {"criterion": criterion, "ratio": ratio}

        def finish(module):
            model = getattr(module, context["attr"])
            info["params_kept"] = size(model)[0] / params_before
            info["final_base_mb"] = base_bytes(model, targets)["base_mb"]
            return model
        return Setup(base, lora_config(targets), callbacks=[callback], finish=finish,
                     info=info)
    return prepare


def loram_start(ratio: float, align_steps: int = 0, quantize: str | None = None):
    """LoRAM: prune the base (LLM-Pruner's Taylor criterion on a few training batches),
    optionally align it on held-out text (WordNet glosses), train LoRA on it (QLoRAM: on
    its quantized form), recover the adapter to the full base and evaluate there."""
    def prepare(base, targets, context) -> Setup:
        import tempfile

        import lorakit
        from lorakit.compress.loram import align, prune_base, recover
        from lorakit.compress.prune import PruneSpec, size

        params_before = size(base)[0]
        pruned, report = prune_base(base, PruneSpec(ratio=ratio), "taylor",
                                    batches=context["score_batches"],
                                    loss_fn=context["loss_fn"], copy_model=False)
        info = {"ratio": ratio, "params_kept": size(pruned)[0] / params_before,
                "align_steps": align_steps}
        if align_steps:
            losses = align(pruned, context["align_batches"], align_steps,
                           loss_fn=context["loss_fn"])
            info["align_loss_first_last"] = [losses[0], losses[-1]]
        if quantize:
            quantize_targets(pruned, targets, quantize)
            info["scheme"] = quantize

        def finish(module):
            with tempfile.TemporaryDirectory() as tmp:
                path = recover(module.adapters, report, Path(tmp) / "recovered.safetensors")
                full = context["fresh_base"]()
                lorakit.load_adapter(full, path, **({"allow_other_precision": True}
                                                    if quantize else {}))
            return full
        return Setup(pruned, lora_config(targets), finish=finish, info=info)
    return prepare


LM_ONLY = ("austen",)
CONTENDERS = [
    Contender("SmolLM2 untuned (reference)", "untuned", fp32_lora, LM_ONLY, trains=False),
    Contender("LoRA (fp32 base)", "lora", fp32_lora),
    Contender("QLoRA nf4", "qlora_nf4", qlora("nf4")),
    Contender("QLoRA int4", "qlora_int4", qlora("int4"), on_request=LM_ONLY),
    Contender("QLoRA int3", "qlora_int3", qlora("int3"), on_request=LM_ONLY),
    Contender("QLoRA int4, merged and re-quantized", "qlora_int4_requant",
              qlora("int4", requantize=True)),
    Contender("LoftQ nf4", "loftq_nf4", loftq_start("nf4")),
    # budgets in true storage bits per weight (codes + HQQ's float32 scale and zero per
    # group: +1 bit at group 64, +0.5 at 128); 4.2 is nf4's own storage
    # on SmolLM2 only when named: its LQ-LoRA candidate table alone (210 matrices x 8
    # configs) is ~40 min here, and the default run is kept to about an hour
    *[Contender(f"LQ-LoRA <= {b:g} bits", f"lq_lora_{b:g}", lq_lora_start(b),
                on_request=LM_ONLY) for b in (4.2, 3.5, 3.25, 3.0)],
    Contender("L4Q 4 bits (merged int4)", "l4q_4", l4q(4)),
    Contender("L4Q 3 bits (merged int3)", "l4q_3", l4q(3), on_request=LM_ONLY),
    *[Contender(f"{label} {int(ratio * 100)}% pruned", f"{key}_{int(ratio * 100)}",
                iterative_pruning(key, ratio), on_request=LM_ONLY if ratio < 0.5 else ())
      for ratio in (0.2, 0.5)
      for label, key in (("LoRAPrune", "loraprune"), ("LLM-Pruner (Taylor)", "taylor"),
                         ("magnitude", "magnitude"))],
    Contender("LoRAM 50% (no alignment)", "loram_50", loram_start(0.5), LM_ONLY),
    Contender("LoRAM 50% + alignment", "loram_50_align", loram_start(0.5, align_steps=20),
              LM_ONLY),
    Contender("QLoRAM 50% nf4 + alignment", "qloram_50_align",
              loram_start(0.5, align_steps=20, quantize="nf4"), LM_ONLY),
]


# --- sizes -------------------------------------------------------------------------------
def base_bytes(model: torch.nn.Module, targets: list[str]) -> dict:
    """Bytes of every base weight as held, and bits per weight of the adapted matrices."""
    from lorakit.layers.quantized import QuantizedLinear

    total = adapted_bytes = adapted_numel = 0
    seen = set()
    for base in model.modules():     # a LoRALayer's base is one of them: counted once
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
        if is_target_weight(name, targets):
            adapted_bytes += nbytes
            adapted_numel += tensor.numel()
    return {"base_mb": total / 2**20,
            "adapted_bits": 8 * adapted_bytes / adapted_numel if adapted_numel else math.nan}


def is_target_weight(name: str, targets: list[str]) -> bool:
    """A parameter name `<module>.weight` (or `<module>.base.weight`) of an adapted module,
    matched as `attach` matches targets."""
    from lorakit.adapters.targets import matches

    if not name.endswith(".weight"):
        return False
    module = name[:-len(".weight")].removesuffix(".base")
    return any(matches(module, t) for t in targets)


# --- the language-model task --------------------------------------------------------------
class LanguageModel(RecordingModule):
    """A causal LM fitted on next-token loss; `evaluate` gives (loss, 0, tokens)."""

    def __init__(self, lm, adapter, lr: float, output_dir: str | None) -> None:
        super().__init__(lr=lr, output_dir=output_dir)
        self.lm = lm
        self.attach_adapters(lm, adapter)

    def loss(self, batch: dict) -> torch.Tensor:
        return lm_loss(self.lm, batch)

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
    from lorakit.domains.text.wordnet import wordnet

    from ..common.prompt_classifier import text_chunks

    text = austen()
    glosses = [gloss for gloss, _ in wordnet()["val"]]   # held-out general English
    return {"align": text_chunks(tokenizer, glosses, 20 * budget.lm_batch, budget.lm_length),
            "train": text_chunks(tokenizer, text["train"], budget.lm_steps * budget.lm_batch,
                                 budget.lm_length),
            "val": text_chunks(tokenizer, text["val"], budget.lm_val_chunks,
                               budget.lm_eval_length),
            "test": text_chunks(tokenizer, text["test"], budget.lm_test_chunks,
                                budget.lm_eval_length)}


def fit(module: RecordingModule, train, val, steps: int, callbacks: list, run_dir: Path) -> dict:
    """`fit_recorded` for `steps` steps, validating at the end; the peak RSS during it."""
    from ..common.sentence_classifier import fit_recorded

    before = rss_mb("VmRSS")
    reset_peak_rss()
    fit_recorded(module, train, val, steps, steps, run_dir, callbacks)
    peak = rss_mb() - before
    times = sorted(module.step_times[2:] or module.step_times)
    step, loss, acc = module.val_curve[-1]
    return {"val_loss": loss, "val_acc": acc, "steps": step, "peak_train_mb": peak,
            "step_s": times[len(times) // 2]}


def lm_loss(model, batch: dict) -> torch.Tensor:
    ids = batch["input_ids"]
    logits = model(input_ids=ids).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def fresh_smollm2():
    from lorakit.domains.text.smollm2 import smollm2

    lm, _ = smollm2()
    lm.config.use_cache = False
    return lm


def austen_run(contender: Contender, lr: float, budget: Budget, data: dict, out: Path):
    import lightning.pytorch as pl

    pl.seed_everything(budget.seed, verbose=False)
    train = chunk_loader(data["train"], budget.lm_batch, seed=budget.seed)
    context = {"task": "austen", "shared": out.parent.parent, "steps": budget.lm_steps,
               "attr": "lm", "fresh_base": fresh_smollm2, "loss_fn": lm_loss,
               "score_batches": [b for _, b in zip(range(4), train)],
               "align_batches": list(chunk_loader(data["align"], budget.lm_batch))}
    setup = contender.prepare(fresh_smollm2(), LM_TARGETS, context)
    sizes = base_bytes(setup.model, LM_TARGETS)
    module = LanguageModel(setup.model, setup.adapter, lr, str(out))
    module.train()
    summary = fit(module, train, chunk_loader(data["val"], 8), budget.lm_steps,
                  setup.callbacks, out)
    summary["val_ppl"] = math.exp(summary["val_loss"])
    evaluated = setup.finish(module) if setup.finish else module.lm
    return summary | sizes | setup.info, evaluated


def austen_worker(contender: Contender, budget: Budget, out: Path) -> dict:
    from lorakit.domains.text.smollm2 import smollm2

    from ..common.prompt_classifier import perplexity
    from ..common.validation_protocol import choose_lr

    _, tokenizer = smollm2()
    data = austen_data(budget, tokenizer)
    if not contender.trains:
        lm = fresh_smollm2()
        val = perplexity(lm, data["val"])
        return {"task": "austen", "contender": contender.name, "key": contender.key,
                "trains": False, "val_ppl": val, "val_loss": math.log(val),
                "test_ppl": perplexity(lm, data["test"]), **base_bytes(lm, LM_TARGETS)}
    sweep, models = {}, {}
    for lr in budget.lm_lrs:
        t0 = time.time()
        sweep[lr], models[lr] = austen_run(contender, lr, budget, data, out / f"lr{lr:g}")
        _say(f"austen {contender.name} lr {lr:g}: val ppl {sweep[lr]['val_ppl']:.2f} "
             f"({time.time() - t0:.0f} s)")
    lr = choose_lr(sweep)
    model = models[lr]
    return {"task": "austen", "contender": contender.name, "key": contender.key, "lr": lr,
            **sweep[lr], **first_run_memory(sweep, budget.lm_lrs), "sweep": {str(k): v["val_ppl"] for k, v in sweep.items()},
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
        context = {"task": "sentiment", "shared": out.parent, "steps": budget.cls_steps,
                   "attr": "encoder", "fresh_base": lambda: minilm()[0]}
        setup = contender.prepare(encoder, MINILM_TARGETS, context)
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
            **sweep[lr], **first_run_memory(sweep, budget.cls_lrs), "sweep": {str(k): v["val_acc"] for k, v in sweep.items()},
            "test_acc": test["movies"],
            "ood_acc": sum(test[d] for d in DOMAINS_OOD) / len(DOMAINS_OOD), "tests": test}


def first_run_memory(sweep: dict, lrs: list[float]) -> dict:
    """The peak of the sweep's first run: every contender's first run is at the same rate in
    a fresh process, where a later run would reuse pages the first one freed."""
    return {"peak_train_mb": sweep[lrs[0]]["peak_train_mb"]}


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


def selected(task: str, only: list[str] | None) -> list[Contender]:
    """The contenders a run of `task` takes: `only`'s where given, else every one that
    runs there by default (SmolLM2's `on_request` rows only when named)."""
    return [c for c in CONTENDERS if task in c.tasks and (
        c.key in only if only else task not in c.on_request)]


def run(out_dir, threads: int = 1, quick: bool = False, budget: Budget | None = None,
        only: list[str] | None = None, tasks: list[str] | None = None) -> dict:
    """Both tasks side by side (each contender its own process, `threads` threads): on two
    cores with one thread each, the default run is about an hour."""
    from concurrent.futures import ThreadPoolExecutor

    budget = budget or (QUICK if quick else Budget())
    out = Path(out_dir)

    def one_task(task: str) -> list[dict]:
        rows = []
        for contender in selected(task, only):
            row = run_worker(task, contender.key, budget, threads, out / "runs" / task /
                             contender.key)
            _say(f"{task} {contender.name}: " + (row.get("error", "")[-300:] or
                 ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float))))
            rows.append(row)
        return rows
    chosen = tasks or list(WORKERS)
    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
        rows = [row for task_rows in pool.map(one_task, chosen) for row in task_rows]
    figures = goal_figures(rows)
    plot_quality_vs_memory(rows, out / "quality_vs_memory.png")
    (out / "tables.md").write_text(tables(rows))
    return {"figures": figures, "rows": rows, "notes": notes(budget)}


def tables(rows: list[dict]) -> str:
    """One markdown table per task, a row per contender (what the results page shows)."""
    out = []
    for task in WORKERS:
        mine = [r for r in rows if r["task"] == task]
        if not mine:
            continue
        lm = task == "austen"
        quality = ("val ppl | test ppl" if lm else "val acc % | test acc % | OOD acc %")
        out += [f"### {'SmolLM2-135M, Austen' if lm else 'MiniLM, sentiment'}", "",
                f"| contender | lr | base MB | adapted bits/weight | peak training MB | "
                f"step s | {quality} |", "|---" * (8 if lm else 9) + "|"]
        for r in mine:
            if "error" in r:
                out.append(f"| {r['contender']} | failed: {r['error'].splitlines()[-1][:80]} |")
                continue
            if not r.get("trains", True):
                out.append(f"| {r['contender']} | | {r['base_mb']:.1f} | "
                           f"{r['adapted_bits']:.2f} | | | {r['val_ppl']:.1f} | "
                           f"{r['test_ppl']:.1f} |")
                continue
            scores = (f"{r['val_ppl']:.1f} | {r['test_ppl']:.1f}" if lm else
                      f"{100 * r['val_acc']:.1f} | {100 * r['test_acc']:.1f} | "
                      f"{100 * r['ood_acc']:.1f}")
            base = f"{r['base_mb']:.1f}" + (f" → {r['final_base_mb']:.1f}"
                                              if "final_base_mb" in r else "")
            out.append(f"| {r['contender']} | {r['lr']:g} | {base} | "
                       f"{r['adapted_bits']:.2f} | {r['peak_train_mb']:.0f} | "
                       f"{r['step_s']:.2f} | {scores} |")
        out.append("")
    return "\n".join(out)


def combine(results: list[Path], out: Path) -> dict:
    """The rows of several runs' results.json as one table: a later run's row replaces an
    earlier one of the same task and contender (a re-run), the figures, tables.md and the
    plot made again from them; `sources` says which file each row came from."""
    rows: dict[tuple[str, str], dict] = {}
    for path in results:
        for row in json.loads(Path(path).read_text())["rows"]:
            rows[(row["task"], row["key"])] = {**row, "source": str(path)}
    order = {c.key: i for i, c in enumerate(CONTENDERS)}
    merged = sorted(rows.values(), key=lambda r: (list(WORKERS).index(r["task"]),
                                                  order.get(r["key"], len(order))))
    out.mkdir(parents=True, exist_ok=True)
    plot_quality_vs_memory(merged, out / "quality_vs_memory.png")
    (out / "tables.md").write_text(tables(merged))
    result = {"suite": SUITE, "figures": goal_figures(merged), "rows": merged,
              "sources": [str(p) for p in results]}
    (out / "combined.json").write_text(json.dumps(result, indent=1))
    return result


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
        if not r.get("trains", True):
            continue
        figures[f"{prefix}_base_mb"] = r["base_mb"]
        figures[f"{prefix}_peak_train_mb"] = r["peak_train_mb"]
        figures[f"{prefix}_step_s"] = r["step_s"]
        reference = _row(rows, r["task"], "qlora_nf4")
        if reference and r["key"] != "qlora_nf4":
            figures[f"{prefix}_{quality}_minus_qlora_nf4"] = r[quality] - reference[quality]
            figures[f"{prefix}_step_s_vs_qlora_nf4"] = r["step_s"] / reference["step_s"]
    return figures


def deployed_mb(row: dict) -> float:
    """A contender's memory on the plot: the base it trains on (LoRAM's pruned one, though
    it is evaluated on the full model), a pruned row's base at the end of training, L4Q's
    exported int-k model."""
    if "export_mb" in row:
        return row["export_mb"]
    return row.get("final_base_mb", row["base_mb"])


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
            ax.scatter(deployed_mb(r), r[quality])
            ax.annotate(r["contender"], (deployed_mb(r), r[quality]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("base weights (MB; pruned: after, L4Q: its export, LoRAM: trained on)")
        if task == "austen":
            ax.set_yscale("log")
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
    parser.add_argument("--tasks", nargs="+", choices=list(WORKERS),
                        help="run only these tasks (default: both)")
    parser.add_argument("--worker", nargs=2, metavar=("TASK", "KEY"),
                        help="internal: one contender on one task in this process")
    parser.add_argument("--budget", type=Path, help="internal: the worker's budget (JSON)")
    parser.add_argument("--combine", nargs="+", type=Path, metavar="RESULTS_JSON",
                        help="no run: the rows of these results.json files (a later one's "
                             "row replaces an earlier one's) into --out/combined.json, "
                             "tables.md and the plot")


def _worker(args) -> bool:
    if args.combine:
        combine(args.combine, Path(args.out))
        return True
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
               keywords=lambda a: {"only": a.only, "tasks": a.tasks}, worker=_worker)
