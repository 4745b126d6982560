"""Benchmark suite `forgetting`: intruder dimensions against forgetting (Shuttleworth et al.
2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence"), and LoRA-GA against LoRA and
full fine-tuning on a causal LM.

The paper's claims checked here: LoRA's tuned weights have intruder dimensions and full
fine-tuning's have (almost) none; a high-rank rsLoRA has fewer than a rank-8 LoRA; more
intruders go with more forgetting of the pre-training distribution. And LoRA-GA's (Wang
et al. 2024): its gradient-aligned start reaches LoRA's final validation loss in fewer
steps.

Two bases, one task (movie-snippet sentiment of `lorakit.domains.text.sentiment`), the
same steps for every row of a base, each row's learning rate chosen on validation alone
from the same sweep (`validation_protocol.choose_lr`):

- **MiniLM** (`sentence_classifier.py`, mean-pooled + linear head; adapters on the 12
  query/value matrices): full fine-tuning, LoRA r=8, rsLoRA r=64. Forgetting = drift of
  its sentence embeddings (the encoder's mean-pooled output, what sentence-transformers
  users consume) on held-out general English, WordNet glosses: 1 − mean cosine between
  the base's and the tuned encoder's embedding of each gloss.
- **SmolLM2-135M** (`prompt_classifier.py`: "Review: …\\nSentiment:" → " positive" /
  " negative", prompts of at most 64 tokens; adapters on all seven projections of the 30
  layers, 210 matrices): full fine-tuning, LoRA r=8, LoRA-GA r=8, rsLoRA r=64.
  Forgetting = perplexity on held-out Jane Austen (chunks of Persuasion, the split's test
  novel) after tuning against before, as a relative change.

Intruders (`lorakit.compare_weights`: top-10 left singular vectors of each tuned matrix
whose max |cos| with every base singular vector is < 0.5, the authors' defaults) are
counted over every adapted matrix, adapters merged; full fine-tuning is counted over the
same matrices. One seed per row (a seed sweep of a 135 M model does not fit the hour on
two CPU cores): differences of a point or two are within seed noise, see the variants
suite for the spread of MiniLM runs.

    run(out_dir, threads=1, quick=False) -> {"figures", "rows", "notes"}
    (+ intruders_vs_forgetting.png, smollm2_val_loss.png)
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

SUITE = "forgetting"
LM_TARGETS = ["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj", "*.gate_proj", "*.up_proj",
              "*.down_proj"]
MINILM_TARGETS = ["*.query", "*.value"]
ALPHA = 16.0
INIT_BATCHES = 4
DOMAINS = ("movies", "tweets", "amazon", "nyt")

# name, key, LoRAConfig fields (None: full fine-tuning), the base(s) it runs on
ROWS = [
    ("full fine-tuning", "full", None, ("minilm", "smollm2")),
    ("LoRA r=8", "lora", {"method": "lora", "rank": 8}, ("minilm", "smollm2")),
    ("LoRA-GA r=8", "lora_ga", {"method": "lora_ga", "rank": 8}, ("smollm2",)),
    ("rsLoRA r=64", "rslora64", {"method": "lora", "rank": 64, "rslora": True},
     ("minilm", "smollm2")),
]


@dataclass
class Budget:
    minilm_steps: int = 100
    minilm_batch: int = 16
    minilm_val_n: int = 256
    minilm_val_every: int = 20
    drift_n: int = 1000                  # held-out WordNet glosses
    lm_steps: int = 40
    lm_batch: int = 8
    lm_max_length: int = 64
    lm_val_n: int = 64
    lm_val_every: int = 5
    lm_test_n: int = 150                 # per domain
    austen_chunks: int = 24              # of 128 tokens
    adapter_lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])
    full_lrs: list[float] = field(default_factory=lambda: [1e-5, 3e-5, 1e-4])
    lm_adapter_lrs: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3])
    lm_full_lrs: list[float] = field(default_factory=lambda: [1e-5, 3e-5, 1e-4])


QUICK = Budget(minilm_steps=6, minilm_val_n=32, minilm_val_every=3, drift_n=32, lm_steps=2,
               lm_batch=2, lm_val_n=4, lm_val_every=1, lm_test_n=4, austen_chunks=2,
               adapter_lrs=[1e-3], full_lrs=[3e-5], lm_adapter_lrs=[1e-3], lm_full_lrs=[1e-5])

NOTES = """\
Sizing (2-core CPU, 1 torch thread): SmolLM2 at batch 8 x <= 64 tokens takes ~3.7 s a step
with rank-8 adapters on its 210 projections and ~5.6 s fully fine-tuned; a MiniLM step
~0.6 s. MiniLM: 3 rows x 3 learning rates x 100 steps ~10 min with validation. SmolLM2:
4 rows x 3 learning rates x 40 steps, validated every 5 steps on 64 prompts, ~45 min;
tests (150 prompts x 4 domains per row), Austen perplexities and the intruder SVDs
(210 matrices, twice per row) ~10 min: about an hour. Every sweep has three values a
factor of ~3 apart. MiniLM's are centred on the rates the `variants` suite chose on
validation for full fine-tuning (3e-5) and LoRA (3e-3) on the same task; SmolLM2's on
common choices for a model of its size (full fine-tuning 3e-5, adapters 3e-4), one
sweep for every adapter row.
Forgetting figures: `drift` = 1 - mean cosine(base embedding, tuned embedding) over the
held-out glosses; `austen_ppl_change` = perplexity after / before - 1 over 24 chunks of
128 tokens of Persuasion. `steps_to_lora_final_val_loss`: the first validation step at
or below LoRA r=8's final validation loss (SmolLM2 only; LoRA-GA spends 4 batches of
gradients before step 1, not counted).
"""


def _say(text: str) -> None:
    print(f"[forgetting suite] {text}", flush=True)


def config_of(fields: dict | None, targets: list[str]):
    from lorakit import LoRAConfig

    if fields is None:
        return None
    return LoRAConfig(alpha=ALPHA, targets=targets, **fields)


def weights_of(model, names: list[str], adapters) -> dict[str, torch.Tensor]:
    """The named weights as the model computes with them (adapters merged, then unmerged)."""
    if adapters is not None:
        adapters.merge()
    state = model.state_dict()
    out = {n: state.get(n, state.get(n.replace(".weight", ".base.weight"))).detach().clone()
           for n in names}
    if adapters is not None:
        adapters.unmerge()
    return out


def sweep(name: str, lrs: list[float], train) -> tuple[float, dict, object]:
    """Each learning rate's run; the one chosen on validation, every summary, its module."""
    from .validation_protocol import choose_lr

    summaries, modules = {}, {}
    for lr in lrs:
        t0 = time.time()
        modules[lr] = train(lr)
        step, loss, acc = modules[lr].val_curve[-1]
        times = sorted(modules[lr].step_times[2:] or modules[lr].step_times)
        summaries[lr] = {"val_loss": loss, "val_acc": acc, "steps": step,
                         "curve": [(s, v) for s, v, _ in modules[lr].val_curve],
                         "step_s": times[len(times) // 2]}
        _say(f"{name} lr {lr:g}: val acc {acc:.3f} loss {loss:.3f} ({time.time() - t0:.0f} s)")
    lr = choose_lr(summaries)
    return lr, summaries, modules[lr]


# --- MiniLM ------------------------------------------------------------------------------
def minilm_part(budget: Budget, out: Path) -> list[dict]:
    import lightning.pytorch as pl

    from lorakit import compare_weights
    from lorakit.domains.text.minilm import minilm
    from lorakit.domains.text.sentiment import sentiment
    from lorakit.domains.text.wordnet import wordnet

    from .sentence_classifier import SentenceClassifier, encode, fit_recorded, loader
    from .variants_suite import MAX_LENGTH, _split

    base, tokenizer = minilm()
    data = sentiment()
    train = encode(tokenizer, data["movies"]["train"], MAX_LENGTH)
    val = encode(tokenizer, _split(data["movies"]["val"], budget.minilm_val_n, 2), MAX_LENGTH)
    held_out = encode(tokenizer, _split(wordnet()["test"], budget.drift_n, 4), MAX_LENGTH)
    names = [n for n in base.state_dict() if n.endswith(("query.weight", "value.weight"))]
    base_weights = {n: t.clone() for n, t in base.state_dict().items() if n in names}
    base_embeddings = embeddings(SentenceClassifier(base, None), held_out)

    rows = []
    for name, key, fields, bases in ROWS:
        if "minilm" not in bases:
            continue

        def train_at(lr, key=key, fields=fields):
            pl.seed_everything(0, verbose=False)
            encoder, _ = minilm()
            run_dir = out / "runs" / f"minilm-{key}-lr{lr:g}"
            module = SentenceClassifier(encoder, config_of(fields, MINILM_TARGETS), lr=lr,
                                        output_dir=str(run_dir))
            module.train()
            return fit_recorded(module, loader(train, budget.minilm_batch, seed=0),
                                loader(val, 64), budget.minilm_steps,
                                budget.minilm_val_every, run_dir)
        lrs = budget.full_lrs if fields is None else budget.adapter_lrs
        lr, summaries, module = sweep(f"MiniLM {name}", lrs, train_at)
        tuned = weights_of(module.encoder, names, module.adapters)
        intruders = compare_weights(base_weights, tuned)
        cos = torch.nn.functional.cosine_similarity(base_embeddings,
                                                    embeddings(module, held_out), dim=-1)
        rows.append(row_of("MiniLM", name, lr, summaries, module, {
            "intruders": intruders["total_intruders"], "matrices": len(intruders["modules"]),
            "drift": float(1 - cos.mean())}))
        _say(f"MiniLM {name}: {rows[-1]}")
    return rows


@torch.no_grad()
def embeddings(module, items: list[dict]) -> torch.Tensor:
    """Sentence embeddings of `items` (in their own order) by the module's encoder."""
    from .sentence_classifier import collate

    module.eval()
    return torch.cat([module.embed(collate(items[i:i + 64])) for i in range(0, len(items), 64)])


# --- SmolLM2 -----------------------------------------------------------------------------
def smollm2_part(budget: Budget, out: Path) -> tuple[list[dict], dict]:
    import lightning.pytorch as pl

    from lorakit import compare_weights, init_from_gradients
    from lorakit.domains.text.austen import austen
    from lorakit.domains.text.sentiment import sentiment
    from lorakit.domains.text.smollm2 import smollm2

    from .prompt_classifier import (
        PromptClassifier,
        answer_ids,
        encode_prompts,
        perplexity,
        prompt_loader,
        text_chunks,
    )
    from .sentence_classifier import accuracy, fit_recorded
    from .validation_protocol import steps_to_reach
    from .variants_suite import _split

    base, tokenizer = smollm2()
    pad, answers = tokenizer.pad_token_id, answer_ids(tokenizer)
    data = sentiment()
    length = budget.lm_max_length
    train = encode_prompts(tokenizer, data["movies"]["train"], length)
    val = encode_prompts(tokenizer, _split(data["movies"]["val"], budget.lm_val_n, 2), length)
    tests = {d: encode_prompts(tokenizer, _split(data[d]["test"], budget.lm_test_n, 3), length)
             for d in DOMAINS}
    chunks = text_chunks(tokenizer, austen()["test"], budget.austen_chunks, 128)
    ppl_before = perplexity(base, chunks)
    _say(f"SmolLM2 base: Austen perplexity {ppl_before:.2f}")
    suffixes = tuple(t.lstrip("*") + ".weight" for t in LM_TARGETS)
    names = [n for n in base.state_dict() if n.endswith(suffixes)]
    base_weights = {n: t.clone() for n, t in base.state_dict().items() if n in names}
    del base

    rows, curves = [], {}
    for name, key, fields, bases in ROWS:
        if "smollm2" not in bases:
            continue

        def train_at(lr, key=key, fields=fields):
            pl.seed_everything(0, verbose=False)
            lm, _ = smollm2()
            run_dir = out / "runs" / f"smollm2-{key}-lr{lr:g}"
            module = PromptClassifier(lm, config_of(fields, LM_TARGETS), answers, lr=lr,
                                      output_dir=str(run_dir))
            module.train()
            if key == "lora_ga":
                batches = [b for _, b in zip(range(INIT_BATCHES), prompt_loader(
                    train, budget.lm_batch, pad, seed=1000))]
                init_from_gradients(module, module.adapters, batches, lambda m, b: m.loss(b))
            return fit_recorded(module, prompt_loader(train, budget.lm_batch, pad, seed=0),
                                prompt_loader(val, 16, pad), budget.lm_steps,
                                budget.lm_val_every, run_dir)
        lrs = budget.lm_full_lrs if fields is None else budget.lm_adapter_lrs
        lr, summaries, module = sweep(f"SmolLM2 {name}", lrs, train_at)
        curves[name] = summaries[lr]["curve"]
        test = {d: 100 * accuracy(module, prompt_loader(items, 16, pad))
                for d, items in tests.items()}
        ppl = perplexity(module.lm, chunks)
        intruders = compare_weights(base_weights, weights_of(module.lm, names, module.adapters))
        rows.append(row_of("SmolLM2", name, lr, summaries, module, {
            "intruders": intruders["total_intruders"], "matrices": len(intruders["modules"]),
            "austen_ppl": ppl, "austen_ppl_change": ppl / ppl_before - 1,
            "movies_acc": test["movies"],
            "ood_acc": sum(test[d] for d in DOMAINS[1:]) / len(DOMAINS[1:]),
            **{f"{d}_acc": test[d] for d in DOMAINS[1:]}}))
        _say(f"SmolLM2 {name}: {rows[-1]}")
        del module
    target = curves["LoRA r=8"][-1][1]
    for row in rows:
        if row["base"] == "SmolLM2":
            row["steps_to_lora_final_val_loss"] = steps_to_reach(curves[row["method"]], target)
    return rows, {"curves": curves, "ppl_before": ppl_before, "lora_final": target}


def row_of(base: str, name: str, lr: float, summaries: dict, module, extra: dict) -> dict:
    chosen = summaries[lr]
    trainable = sum(p.numel() for p in module.trainable_parameters())
    return {"base": base, "method": name, "lr": lr,
            "sweep_val_acc": "; ".join(f"{k:g}: {100 * s['val_acc']:.1f}"
                                       for k, s in summaries.items()),
            "trainable_params": trainable, "steps": chosen["steps"],
            "step_ms": 1000 * chosen["step_s"], "val_acc": 100 * chosen["val_acc"],
            "val_loss": chosen["val_loss"], **extra}


def run(out_dir, threads: int = 1, quick: bool = False, budget: Budget | None = None) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    budget = budget or (QUICK if quick else Budget())
    t_start = time.time()
    rows = minilm_part(budget, out)
    _say(f"MiniLM part done ({time.time() - t_start:.0f} s)")
    lm_rows, lm = smollm2_part(budget, out)
    rows += lm_rows
    figures = goal_figures(rows)
    figures["smollm2_base_austen_ppl"] = lm["ppl_before"]
    figures["smollm2_lora_final_val_loss"] = lm["lora_final"]
    figures["wall_s"] = time.time() - t_start
    plot_intruders_vs_forgetting(rows, out / "intruders_vs_forgetting.png")
    plot_lm_curves(lm["curves"], lm["lora_final"], out / "smollm2_val_loss.png")
    (out / "curves.json").write_text(json.dumps(lm["curves"], indent=1))
    note = (f"This run: MiniLM {budget.minilm_steps} steps x {budget.minilm_batch}, "
            f"learning rates {budget.adapter_lrs} (full FT {budget.full_lrs}); SmolLM2 "
            f"{budget.lm_steps} steps x {budget.lm_batch}, learning rates "
            f"{budget.lm_adapter_lrs} (full FT {budget.lm_full_lrs}); seed 0.\n\n")
    return {"figures": figures, "rows": rows, "notes": note + NOTES}


def goal_figures(rows: list[dict]) -> dict[str, float]:
    """The claims as numbers: intruders per row, forgetting per row, LoRA-GA's step ratio,
    and whether intruders and forgetting rank the rows alike (Spearman, per base)."""
    figures = {}
    for row in rows:
        tag = f"{row['base'].lower()}_{_key(row['method'])}"
        figures[f"{tag}_intruders"] = row["intruders"]
        forgetting = row.get("drift", row.get("austen_ppl_change"))
        figures[f"{tag}_forgetting"] = forgetting
    lm = {_key(r["method"]): r for r in rows if r["base"] == "SmolLM2"}
    ga, lora = (lm.get(k, {}).get("steps_to_lora_final_val_loss") for k in ("lora_ga", "lora"))
    if ga is not None and lora:
        figures["smollm2_lora_ga_steps_to_lora_final_val_loss_ratio"] = ga / lora
    for base in ("MiniLM", "SmolLM2"):
        these = [r for r in rows if r["base"] == base]
        forgetting = [r.get("drift", r.get("austen_ppl_change")) for r in these]
        if len(these) > 2:
            figures[f"{base.lower()}_spearman_intruders_forgetting"] = spearman(
                [r["intruders"] for r in these], forgetting)
    return figures


def _key(method: str) -> str:
    return next(k for n, k, _, _ in ROWS if n == method)


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when a side is constant."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for m in range(i, j + 1):
                r[order[m]] = (i + j) / 2
            i = j + 1
        return torch.tensor(r)
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / denominator if denominator else float("nan")


def plot_intruders_vs_forgetting(rows: list[dict], png: Path) -> None:
    from .variants_suite import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, base, label in ((axes[0], "MiniLM", "embedding drift (1 - mean cos)"),
                            (axes[1], "SmolLM2", "Austen perplexity change (after/before - 1)")):
        for row in (r for r in rows if r["base"] == base):
            y = row.get("drift", row.get("austen_ppl_change"))
            ax.scatter(row["intruders"], y)
            ax.annotate(row["method"], (row["intruders"], y), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
        matrices = next((r["matrices"] for r in rows if r["base"] == base), 0)
        ax.set_xlabel(f"intruder dimensions ({matrices} matrices, top 10 each)")
        ax.set_ylabel(label)
        ax.set_title(base)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def plot_lm_curves(curves: dict, lora_final: float, png: Path) -> None:
    from .variants_suite import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        ax.plot([s for s, _ in curve], [v for _, v in curve], marker=".", label=name)
    ax.axhline(lora_final, color="k", ls=":", lw=1, label="LoRA r=8's final")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (answer token, movies)")
    ax.set_title("SmolLM2-135M prompt classification")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    from lorakit.reports.bench import suite_parser, write_suite_run

    a = suite_parser(__doc__, SUITE).parse_args()
    write_suite_run(SUITE, a, lambda: run(a.out, a.threads, a.quick))
