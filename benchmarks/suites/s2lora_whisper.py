"""Benchmark `s2lora-whisper`: the S2-LoRA paper's comparison at small scale.

The embedded base (Whisper tiny.en taught the 3 s context on adult voices, see
lorakit.domains.speech.adult_base) adapted to the synthetic child voices with five
methods, the same data, steps, batch size, seeds and learning-rate sweep for each:

    full fine-tuning | BitFit | LoRA r=8 | PEFT AdaLoRA (r 12 → 8) | S2-LoRA r=8

**Tuning, on validation only.** Every method gets the same 3-value learning-rate sweep
(its own grid: adapters and BitFit 5e-4, 2e-3, 8e-3; full fine-tuning 1e-5, 3e-5, 1e-4;
S2-LoRA's λ at 10× the rate), trained with seed 0; the rate chosen is the one with the
lowest child_val WER + adult_val WER (the two validation sets: child voices and adult
voices, speaker-disjoint from every test set, sentences disjoint from training): good on
children without forgetting adults. Seeds 1 and 2 then train at the chosen rate; the
sweep's own seed-0 model is the first seed. S2-LoRA's L1 (a proximal step in Adam's
metric, see lorakit.training.proximal) was fixed before the sweep on child_val alone (seed 0,
lr 2e-3, 60 steps): 1e-3 and 1e-2 tied at WER 0.032 (83 % and 97 % of λ exactly zero);
1e-3, the weaker penalty, was taken.

**Test sets** (read once, by the chosen models): child_test (in-domain), child_ood (voices
and pitch never seen), adult_test (synthetic adults, forgetting) and adult_real (Asterisk's
real recorded prompts, Debian `asterisk-core-sounds-en-wav`, 8 kHz telephone band
resampled to 16 kHz, the 435 of 563 clips that fit the 3 s context). Every row reports
WER/CER per set; the zero-shot base is the first row. Per run, hypotheses sit next to
references in runs/<method>-lr<rate>-seed<k>/hypotheses/<set>.jsonl.

**Sparsity and rank patterns.** S2-LoRA's per-matrix active ranks (λ exactly nonzero) and
AdaLoRA's final ranks (nonzero entries of its E after PEFT's budget schedule) for the
seed-0 models, their Spearman rank correlation over the 64 adapted matrices, and a
heat-map of both (`ranks.png`; `ranks.json`).

Goals (the paper's claims): S2-LoRA in-domain WER within 10 % of AdaLoRA's with ≤ 10 % of
its trainable parameters; OOD WER ≤ AdaLoRA's; ≥ 50 % of λ exactly zero; positive rank
correlation with AdaLoRA's allocation.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import lightning.pytorch as pl
import matplotlib
import torch

from lorakit.atomic import atomic_write
from lorakit.domains.speech.asterisk import asterisk_corpus
from lorakit.domains.speech.metrics import error_rates
from lorakit.domains.speech.synthetic import CorpusConfig, build_adult_val, build_corpus
from lorakit.domains.speech.whisper_model import transcribe
from lorakit.plugins.s2lora_whisper.data import SpeechDataModule
from lorakit.plugins.s2lora_whisper.module import TARGETS, WhisperAdapterModule
from lorakit.reports.bench import cached

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SUITE = "s2lora-whisper"
VAL_SETS = ("child_val", "adult_val")
TEST_SETS = ("child_test", "child_ood", "adult_test", "adult_real")
STEPS, QUICK_STEPS = 60, 10
SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)
CORPUS = CorpusConfig(val=96, test=384, test_speakers=8)
QUICK_CORPUS = CorpusConfig(val=16, test=32, test_speakers=4)
QUICK_REAL = 32                 # adult_real clips in a quick run
ADAPTER_LRS, FULL_LRS = (5e-4, 2e-3, 8e-3), (1e-5, 3e-5, 1e-4)
L1 = 1e-3
METHODS = {
    "full fine-tuning": ({"method": "full"}, FULL_LRS),
    "BitFit": ({"method": "bitfit"}, ADAPTER_LRS),
    "LoRA r=8": ({"method": "lora"}, ADAPTER_LRS),
    "AdaLoRA (PEFT)": ({"method": "lora"}, ADAPTER_LRS),
    "S2-LoRA r=8": ({"method": "s2lora", "l1": L1}, ADAPTER_LRS),
}
S2, ADA = "S2-LoRA r=8", "AdaLoRA (PEFT)"


class AdaLoRAModule(WhisperAdapterModule):
    """The same training loop with PEFT's AdaLoRA in place of lorakit's adapters.

    AdaLoRA (Zhang et al. 2023) parameterises ΔW = P·diag(E)·Q, adds an orthogonality
    penalty on P and Q, and prunes E by importance from init_r to target_r on a schedule
    (`update_and_allocate` after every optimizer step).
    """

    def __init__(self, total_steps: int, **kwargs) -> None:
        self.total_steps = total_steps
        super().__init__(**kwargs)

    def adapt(self, model) -> None:
        from peft import AdaLoraConfig, AdaLoraModel

        targets = [t.removeprefix("*.") for t in TARGETS]
        config = AdaLoraConfig(init_r=12, target_r=8, lora_alpha=16, target_modules=targets,
                               total_step=self.total_steps, tinit=self.total_steps // 10,
                               tfinal=self.total_steps // 5, deltaT=max(self.total_steps // 20, 1),
                               orth_reg_weight=0.5)
        self.tuner = [AdaLoraModel(model, config, "default")]

    def regularizer(self) -> torch.Tensor:
        terms = []
        for name, p in self.model.named_parameters():
            if p.requires_grad and ("lora_A" in name or "lora_B" in name):
                cov = p @ p.T if "lora_A" in name else p.T @ p
                terms.append(torch.norm(cov - torch.eye(cov.shape[0], device=p.device), p="fro"))
        return 0.5 * torch.stack(terms).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # after the optimizer step, while this step's gradients are still there
        self.tuner[0].update_and_allocate(self.global_step)

    @contextlib.contextmanager
    def base_model(self):
        self.tuner[0].disable_adapter_layers()
        try:
            yield self.model
        finally:
            self.tuner[0].enable_adapter_layers()

    def final_ranks(self) -> dict[str, int]:
        """Module path -> ranks left in use (nonzero entries of E)."""
        return {name: int((m.lora_E["default"] != 0).sum()) for name, m in
                self.model.named_modules() if hasattr(m, "lora_E") and "default" in m.lora_E}


def s2lora_ranks(module: WhisperAdapterModule) -> dict[str, int]:
    """Module path -> S2-LoRA ranks in use (λ exactly nonzero)."""
    return {row["module"]: row["rank"] - row["exact_zeros"]
            for row in module.adapters.sparsity_report()}


# --- data -------------------------------------------------------------------------------
def loaders(quick: bool, out_dir: Path) -> tuple[SpeechDataModule, dict, dict]:
    """The training data, the validation loaders and the test loaders."""
    config = QUICK_CORPUS if quick else CORPUS
    corpus, adult_val = build_corpus(config), build_adult_val(config)
    real = asterisk_corpus(max_seconds=3.0) / "adult_real.jsonl"
    if quick:   # the first QUICK_REAL clips, their audio paths made absolute
        rows = [json.loads(line) for line in real.read_text().splitlines()[:QUICK_REAL]]
        quick_real = out_dir / "adult_real.jsonl"
        quick_real.parent.mkdir(parents=True, exist_ok=True)
        quick_real.write_text("".join(json.dumps({**r, "audio": str(real.parent / r["audio"])})
                                      + "\n" for r in rows))
        real = quick_real
    common = {"batch_size": 16, "max_seconds": 3.0, "too_long": "skip"}
    train = SpeechDataModule(train_manifest=str(corpus / "child_train.jsonl"), **common)
    train.setup("fit")
    sets = {}
    for names, manifests in ((VAL_SETS, [corpus / "child_val.jsonl",
                                         adult_val / "adult_val.jsonl"]),
                             (TEST_SETS, [corpus / f"{s}.jsonl" for s in TEST_SETS[:3]] + [real])):
        data = SpeechDataModule(test_manifest=[str(m) for m in manifests], **common)
        data.setup("test")
        sets[names] = dict(zip(names, data.test_dataloader()))
    return train, sets[VAL_SETS], sets[TEST_SETS]


def transcripts(model, loaders_: dict, max_tokens: int, mel) -> dict[str, dict]:
    """Per set: references, hypotheses, audio paths and WER/CER."""
    out = {}
    for name, loader in loaders_.items():
        refs, hyps, audio = [], [], []
        for batch in loader:
            hyps += transcribe(model, mel(batch["audio"]), max_tokens)
            refs += batch["text"]
            audio += batch["path"]
        out[name] = {"refs": refs, "hyps": hyps, "audio": audio, **error_rates(refs, hyps)}
    return out


def scores(sets: dict[str, dict]) -> dict[str, float]:
    return {f"{name}_{m}": s[m] for name, s in sets.items() for m in ("wer", "cer")}


def write_hypotheses(folder: Path, sets: dict[str, dict]) -> None:
    for name, s in sets.items():
        rows = [{"audio": a, "reference": r, "hypothesis": h}
                for a, r, h in zip(s["audio"], s["refs"], s["hyps"])]
        atomic_write(folder / "hypotheses" / f"{name}.jsonl", lambda tmp, rows=rows: Path(
            tmp).write_text("".join(json.dumps(row) + "\n" for row in rows)))


# --- training ---------------------------------------------------------------------------
def run_folder(out_dir: Path, label: str, lr: float, seed: int) -> Path:
    """Where one run keeps its adapter, hypotheses and scores."""
    return out_dir / "runs" / f"{label.split()[0]}-lr{lr:g}-seed{seed}"


def make_module(label: str, lr: float, seed: int, steps: int, out_dir: Path):
    pl.seed_everything(seed, verbose=False)
    options, _ = METHODS[label]
    extra = {"lambda_lr": 10 * lr} if options["method"] == "s2lora" else {}
    cls = AdaLoRAModule if label == ADA else WhisperAdapterModule
    if cls is AdaLoRAModule:
        extra["total_steps"] = steps
    return cls(**options, **extra, lr=lr, output_dir=str(run_folder(out_dir, label, lr, seed)))


def train(label: str, lr: float, seed: int, data, steps: int, out_dir: Path):
    """One method trained for `steps` steps at `lr` from `seed`; (module, seconds)."""
    module = make_module(label, lr, seed, steps, out_dir)
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=data.train_dataloader())
    return module, time.perf_counter() - start


def trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def trained_state(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def sweep_run(label: str, lr: float, data, val: dict, steps: int, out_dir: Path) -> dict:
    """Seed 0 at `lr`: its validation WERs (and its trained tensors kept on disk, so the
    chosen one is scored on the test sets without training it again)."""
    folder = run_folder(out_dir, label, lr, 0)

    def compute() -> dict:
        module, seconds = train(label, lr, 0, data, steps, out_dir)
        v = transcripts(module.model, val, module.max_tokens, module.mel)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(trained_state(module), folder / "trained.pt")
        return {"method": label, "lr": lr, "select": sum(v[s]["wer"] for s in VAL_SETS),
                "train_s": seconds, **{f"{s}_wer": v[s]["wer"] for s in VAL_SETS}}
    row = cached(folder / "val.json", compute)
    print(row, flush=True)
    return row


def test_run(label: str, lr: float, seed: int, data, tests: dict, steps: int,
             out_dir: Path, train_s: float | None = None) -> dict:
    """A run scored on the test sets: seed 0 from the sweep's kept tensors, other seeds
    trained here. Hypotheses beside it; S2-LoRA's and AdaLoRA's ranks in use."""
    folder = run_folder(out_dir, label, lr, seed)

    def compute() -> dict:
        if seed == 0:
            module, seconds = make_module(label, lr, seed, steps, out_dir), train_s
            module.load_state_dict(torch.load(folder / "trained.pt", weights_only=True),
                                   strict=False)
        else:
            module, seconds = train(label, lr, seed, data, steps, out_dir)
        sets = transcripts(module.model, tests, module.max_tokens, module.mel)
        write_hypotheses(folder, sets)
        n = trainable(module)
        ranks = (s2lora_ranks(module) if label == S2 else
                 module.final_ranks() if label == ADA else None)
        return {"method": label, "seed": seed, "lr": lr, "trainable_params": n,
                "adapter_kb": n * 4 / 1024, **scores(sets), "train_s": seconds,
                **({"ranks": ranks} if ranks else {})}
    row = cached(folder / "test.json", compute)
    print({k: v for k, v in row.items() if k != "ranks"}, flush=True)
    return row


def method_runs(label: str, data, val: dict, tests: dict, steps: int, out_dir: Path,
                seeds, quick: bool) -> tuple[list[dict], list[dict]]:
    """The sweep of `label` (on validation), then its test runs at the chosen rate."""
    lrs = METHODS[label][1]
    rows = [sweep_run(label, lr, data, val, steps, out_dir) for lr in
            (lrs[1:2] if quick else lrs)]
    best = min(rows, key=lambda r: r["select"])
    runs = [test_run(label, best["lr"], seed, data, tests, steps, out_dir,
                     train_s=best["train_s"]) for seed in seeds]
    for r in rows:     # the unchosen rates' tensors are not needed again
        if r is not best:
            (run_folder(out_dir, label, r["lr"], 0) / "trained.pt").unlink(missing_ok=True)
    return rows, runs


def mean_rows(runs: list[dict]) -> list[dict]:
    """One row per method: the mean over seeds of every number, and the spread (sample
    standard deviation) of each WER."""
    rows = []
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        row = {"method": method, "lr": mine[0]["lr"], "seeds": len(mine)}
        for key in ("trainable_params", "adapter_kb", *(f"{s}_{m}" for s in TEST_SETS
                                                        for m in ("wer", "cer")), "train_s"):
            values = torch.tensor([float(r[key]) for r in mine], dtype=torch.float64)
            row[key] = float(values.mean())
            if key.endswith("_wer"):
                row[f"{key}_sd"] = float(values.std()) if len(mine) > 1 else 0.0
        rows.append(row)
    return rows


def run(out_dir: Path, threads: int = 1, quick: bool = False,
        seeds: tuple[int, ...] | None = None, methods: list[str] | None = None) -> dict:
    """The suite; `methods`: only these (by their first word, e.g. ["S2-LoRA", "LoRA"]),
    to split one out_dir's runs over several processes; a later run with every method
    finds their results there and only adds the rest."""
    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    steps = QUICK_STEPS if quick else STEPS
    seeds = seeds or (QUICK_SEEDS if quick else SEEDS)
    labels = [m for m in METHODS if methods is None or m.split()[0] in methods]
    data, val, tests = loaders(quick, out_dir)

    def zero_shot() -> dict:
        base = WhisperAdapterModule()
        with base.base_model() as model:
            sets = transcripts(model, tests, base.max_tokens, base.mel)
        write_hypotheses(out_dir / "runs" / "base", sets)
        return {"method": "zero-shot base", "seed": 0, "lr": 0.0, "trainable_params": 0,
                "adapter_kb": 0.0, **scores(sets), "train_s": 0.0}
    runs = [cached(out_dir / "runs" / "base" / "test.json", zero_shot)]
    sweeps, ranks = [], {}
    for label in labels:
        rows, mine = method_runs(label, data, val, tests, steps, out_dir, seeds, quick)
        sweeps += rows
        runs += mine
        if "ranks" in mine[0]:
            ranks[label] = mine[0]["ranks"]
    runs = [{k: v for k, v in r.items() if k != "ranks"} for r in runs]
    rows = mean_rows(runs)
    (out_dir / "runs_by_seed.json").write_text(json.dumps(runs, indent=2))
    (out_dir / "sweep.json").write_text(json.dumps(sweeps, indent=2))
    (out_dir / "ranks.json").write_text(json.dumps(ranks, indent=2))
    plot(rows, out_dir / "wer_by_method.png")
    plot_ranks(ranks, out_dir / "ranks.png")
    words = {name: sum(len(t.split()) for b in loader for t in b["text"])
             for name, loader in tests.items()}
    chosen = ", ".join(f"{r['method']} {r['lr']:g}" for r in rows[1:])
    return {"figures": figures(rows, runs, ranks), "rows": rows,
            "notes": f"{steps} steps of 16 clips each; learning rates chosen on child_val + "
                     f"adult_val WER with seed 0 (sweep.json): {chosen}; seeds {list(seeds)}: "
                     "each row is the mean over seeds (`_sd`: the standard deviation of the "
                     "WER over seeds), per-seed rows in runs_by_seed.json; test words per set: "
                     + ", ".join(f"{s} {n}" for s, n in words.items())
                     + ". Synthetic espeak-ng speech except adult_real (Asterisk's recorded "
                     "prompts, CC-BY-SA-3.0); adapter_kb counts trainable tensors in float32."}


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank); nan if either is constant."""
    from scipy.stats import spearmanr

    if len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan
    return float(spearmanr(a, b).statistic)


def figures(rows: list[dict], runs: list[dict], ranks: dict) -> dict:
    by = {r["method"]: r for r in rows}
    base, out = by["zero-shot base"], {}
    if S2 in by and ADA in by:
        s2, ada = by[S2], by[ADA]
        out = {"s2lora_params_over_adalora": s2["trainable_params"] / ada["trainable_params"],
               "s2lora_child_wer_over_adalora": s2["child_test_wer"] / ada["child_test_wer"],
               "s2lora_ood_wer_minus_adalora": s2["child_ood_wer"] - ada["child_ood_wer"]}
    if ranks.get(S2):
        s2_ranks = list(ranks[S2].values())
        out["s2lora_lambda_exact_zero_fraction"] = 1 - sum(s2_ranks) / (8 * len(s2_ranks))
        common = sorted(set(ranks[S2]) & set(ranks.get(ADA, {})))
        out["rank_matrices_compared"] = len(common)
        out["s2lora_adalora_rank_spearman"] = spearman([ranks[S2][m] for m in common],
                                                       [ranks[ADA][m] for m in common])
    for row in rows[1:]:
        key = row["method"].split()[0].lower().replace("-", "")
        for s in ("adult_test", "adult_real"):
            out[f"{key}_{s}_wer_change"] = row[f"{s}_wer"] - base[f"{s}_wer"]
        out[f"{key}_chosen_lr"] = row["lr"]
    return out


# --- plots --------------------------------------------------------------------------------
def plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        ax.bar([j + i * width for j in range(len(TEST_SETS))],
               [row[f"{s}_wer"] for s in TEST_SETS], width,
               yerr=[row.get(f"{s}_wer_sd", 0.0) for s in TEST_SETS], capsize=2,
               label=row["method"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(TEST_SETS))], TEST_SETS)
    ax.set_ylabel("WER")
    ax.legend(fontsize=7)
    ax.set_title("Whisper tiny.en (3 s, adult stage), by adaptation method")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


MATRICES = ("attn.query", "attn.key", "attn.value", "attn.out", "cross_attn.query",
            "cross_attn.key", "cross_attn.value", "cross_attn.out", "mlp.0", "mlp.2")


def rank_grid(ranks: dict[str, int]) -> tuple[list[str], list[list[float]]]:
    """Rows: encoder then decoder blocks; columns: MATRICES; nan where a block has none."""
    blocks = sorted({m.split(".blocks.")[0] + "." + m.split(".blocks.")[1].split(".")[0]
                     for m in ranks}, key=lambda b: (b.startswith("decoder"), int(b.split(".")[-1])))
    grid = [[float(ranks.get(f"{b.split('.')[0]}.blocks.{b.split('.')[1]}.{m}", math.nan))
             for m in MATRICES] for b in blocks]
    return blocks, grid


def plot_ranks(ranks: dict[str, dict[str, int]], path: Path) -> None:
    if not ranks:
        return
    fig, axes = plt.subplots(1, len(ranks), figsize=(5 * len(ranks), 4), squeeze=False)
    for ax, (label, per_matrix) in zip(axes[0], ranks.items()):
        blocks, grid = rank_grid(per_matrix)
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=max(per_matrix.values(), default=1))
        ax.set_xticks(range(len(MATRICES)), MATRICES, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(blocks)), blocks, fontsize=7)
        ax.set_title(f"{label}: ranks in use per matrix", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    from lorakit.benchmarks.common.command_line import suite_main

    suite_main(SUITE, __doc__, run,
               options=lambda p: p.add_argument(
                   "--methods", nargs="+", choices=[m.split()[0] for m in METHODS],
                   help="only these methods (several processes on one --out add up)"),
               keywords=lambda a: {"methods": a.methods})
