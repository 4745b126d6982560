"""Benchmark suite `lorabert`: LoRA-BERT against full fine-tuning, a frozen encoder and the
classic coding-potential tools, on CPAT's human set (held-out test split, seed 0).

Rows: LoRA-BERT (LoRA r=8 on query/value + head), full fine-tuning, frozen encoder +
trained head, ORF/Fickett/hexamer LR, k-mer LR, length only, and CPC2 when its `cpc2`
command is installed (its own shipped model; nothing trained here). Every row is scored on

- the full test split: accuracy, MCC, AUROC, sensitivity, specificity, trainable
  parameters, training time, prediction time per 1,000 transcripts;
- fragments of the test transcripts (the paper's robustness claim): one fragment of
  300, 600 and 1,200 nt per transcript at a random position (seed `FRAGMENT_SEED`,
  `lorakit.domains.genomics.fragments`); transcripts shorter than the length are skipped,
  so length tells nothing about the label: columns `mcc_300`, `auroc_300`, ...;
- 100 mouse RefSeq mRNAs (ezLncPred's wheel): `mouse_recall`, the share called coding
  (recall only: the wheel has no mouse lncRNAs);
- calibration: `brier` on the test split, and `brier_ts` after temperature scaling with
  the `temperature` fitted on the validation split (`domains/genomics/calibration.py`);
  `reliability.png` per row, `reliability_lora_bert.png` across fragment lengths. A
  temperature cannot move the 0.5 cut, so `mcc_valthr_300`, ... give each row's MCC on
  the test fragments at the threshold that is MCC-best on validation fragments of that
  length.

The claims at small scale (figures): LoRA-BERT at least matches the best classic baseline
on MCC and AUROC while training <= 5% of the parameters that full fine-tuning trains
(`lora_mcc_minus_best_classic`, `lora_auroc_minus_best_classic`, `lora_param_fraction`;
the `..._ci95_lo/hi` figures bound each gap by a paired bootstrap over the test
transcripts), and LoRA-BERT is ahead of CPC2 and the ORF baseline on every fragment
length (`lora_mcc_minus_orf_at_300`, `lora_auroc_minus_cpc2_at_300`, ..., with intervals;
`goal_fragments_met`). `lora_best_threshold_*` show whether the MCC-best threshold drifts
from full transcripts to fragments (a diagnostic on test data: it chooses nothing).

Frozen settings (2026-12-05, issue #23): the defaults of this file as committed that
day (the rows' learning rates below, 2 epochs, the full training split, the module's
defaults, seed 0, `FRAGMENT_SEED`) on the embedded base as shipped that day: the 4-layer,
512-codon-window base chosen on validation by `studies/lorabert_base_selection.py` (its
results in benchmarks/results/lorabert-base-selection/). The final run is the first full run with
them and no overrides (figure `frozen_settings` = 1) whose results.json is committed in
benchmarks/results/lorabert/. Earlier test readings (the 2026-12-04 final run on the
2-layer base, the README's 2026-12-03 table and the linear-head run before it) are
history: they chose no setting and are not a selection among runs.

    run(out_dir, threads=1, quick=False) -> {"figures", "rows", "notes"} (+ PNG plots)
    quick: 150 training transcripts per class, 1 epoch, 200 test and 100 validation
    transcripts per class.
    pretrained: another k-mer BERT folder than the embedded base (`python
    benchmarks/suites/lorabert.py --pretrained DIR`), to compare bases.

Each fine-tuned row is kept in OUT/runs/<mode>/row.json with its settings and the SHA-256
of the base's weights, and read back by a later run with the same ones: a stopped run
resumes, and the three rows can be fitted by processes of their own, one per core,
before the run that writes the report:

    python -m lorakit.benchmarks.suites.lorabert --out DIR --rows lora head &
    python -m lorakit.benchmarks.suites.lorabert --out DIR --rows full; wait
    python -m lorakit.benchmarks.suites.lorabert --out DIR
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from lorakit.domains.genomics.calibration import (
    apply_temperature,
    best_threshold,
    brier,
    fit_temperature,
    plot_reliability,
)
from lorakit.domains.genomics.metrics import (
    binary_metrics,
    paired_bootstrap,
    plot_roc,
    save_png,
)
from lorakit.reports.bench import cached

SUITE = "lorabert"
MODELS = (("LoRA-BERT", {"mode": "lora", "lr": 2e-3}),
          ("full fine-tuning", {"mode": "full", "lr": 3e-4}),
          ("frozen encoder + head", {"mode": "head", "lr": 1e-2}))
EPOCHS = 2
FRAGMENT_LENGTHS = (300, 600, 1200)
FRAGMENT_SEED = 23
ORF = "ORF/Fickett/hexamer LR"
COLUMNS = ["name", "accuracy", "mcc", "auroc", "sensitivity", "specificity",
           *[f"{m}_{n}" for n in FRAGMENT_LENGTHS for m in ("mcc", "auroc", "mcc_valthr")],
           "mouse_recall", "brier", "brier_ts", "temperature",
           "trainable_params", "train_s", "predict_s_per_1000"]


def _gap(a: dict, b: dict, labels, metric: str, key: str, probs="probs") -> dict[str, float]:
    """Row a minus row b on `metric` over the same transcripts, with the 95% interval of a
    paired bootstrap over them: a gap inside it is test-set noise."""
    pa = a[probs] if probs == "probs" else a["extra"][probs]
    pb = b[probs] if probs == "probs" else b["extra"][probs]
    gap = paired_bootstrap(labels, pa, pb, metric)
    return {key: gap["diff"], f"{key}_ci95_lo": gap["lo"], f"{key}_ci95_hi": gap["hi"]}


def fragment_sets(items, lengths=FRAGMENT_LENGTHS, seed: int = FRAGMENT_SEED,
                  prefix: str = "frag") -> dict:
    """name -> the transcripts long enough, each replaced by its random fragment."""
    from lorakit.domains.genomics.fragments import random_fragments
    from lorakit.plugins.lorabert.data import Transcript
    sets = {}
    for n in lengths:
        kept, frags = random_fragments([t.seq for t in items], n, seed)
        sets[f"{prefix}{n}"] = [Transcript(items[i].id, f, items[i].label)
                                for i, f in zip(kept, frags)]
    return sets


def _score_extras(row: dict, sets: dict) -> None:
    """Per-row columns from its probabilities on the extra sets. `mcc_valthr_<n>`: MCC on
    the test fragments at the threshold that maximises MCC on validation fragments of the
    same length (a threshold chosen on validation, for a user who knows the length)."""
    for n in FRAGMENT_LENGTHS:
        labels, probs = [t.label for t in sets[f"frag{n}"]], row["extra"][f"frag{n}"]
        m = binary_metrics(labels, probs)
        row[f"mcc_{n}"], row[f"auroc_{n}"] = m["mcc"], m["auroc"]
        thr = best_threshold([t.label for t in sets[f"valfrag{n}"]],
                             row["extra"][f"valfrag{n}"])[0]
        row[f"mcc_valthr_{n}"] = binary_metrics(labels, probs, thr)["mcc"]
    row["mouse_recall"] = float(np.mean(np.asarray(row["extra"]["mouse"]) >= 0.5))
    row["brier"] = brier(row["labels"], row["probs"])
    row["temperature"] = fit_temperature([t.label for t in sets["val"]], row["extra"]["val"])
    row["brier_ts"] = brier(row["labels"], apply_temperature(row["probs"], row["temperature"]))


def amounts(quick: bool, epochs: int | None, train_per_class: int | None) -> tuple:
    """Epochs and training transcripts per class: the given ones, else the defaults."""
    return epochs or (1 if quick else EPOCHS), train_per_class or (150 if quick else None)


def data(quick: bool, train_per_class: int | None) -> tuple[dict, dict]:
    """The splits (train / val / test, cut in a quick run) and the extra sets every row is
    scored on: validation, test and validation fragments, mouse mRNAs."""
    from lorakit.domains.genomics.mouse_data import load_mouse_mrnas
    from lorakit.plugins.lorabert.data import Transcript
    from lorakit.plugins.lorabert.experiment import cut_per_class, split_items

    splits = split_items("cpat_human", train_per_class=train_per_class)
    if quick:
        splits["test"] = cut_per_class(splits["test"], 200, seed=1)
        splits["val"] = cut_per_class(splits["val"], 100, seed=1)
    sets = {"val": splits["val"], **fragment_sets(splits["test"]),
            **fragment_sets(splits["val"], prefix="valfrag"),
            "mouse": [Transcript(r.id, r.seq, 1) for r in load_mouse_mrnas()]}
    return splits, sets


def base_id(pretrained: str | None) -> str:
    """The SHA-256 of the base's weights: a fitted row is read back only for the same base."""
    from lorakit.plugins.lorabert.module import BASE_DIR

    weights = Path(pretrained or BASE_DIR) / "model.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def deep_rows(out: Path, splits: dict, sets: dict, epochs: int, quick: bool,
              train_per_class: int | None, pretrained: str | None,
              only: list[str] | None = None) -> list[dict]:
    """The rows of `MODELS` (only those whose mode is in `only`), each fitted in
    out/runs/<mode>/ and kept there as row.json: a stopped suite resumes, and rows split
    over several processes on one out folder (`--rows`) add up."""
    from lorakit.plugins.lorabert.experiment import run_model

    rows, base = [], base_id(pretrained)
    for name, kw in MODELS:
        if only and kw["mode"] not in only:
            continue
        folder = out / "runs" / kw["mode"]

        def fit(name=name, kw=kw, folder=folder) -> dict:
            t0 = time.time()
            row = run_model(name, splits, folder, epochs=epochs, pretrained=pretrained,
                            extra=sets, **kw)
            row.pop("module")
            print(f"[lorabert suite] {name}: MCC {row['mcc']:.3f} AUROC {row['auroc']:.3f} "
                  f"({time.time() - t0:.0f} s with the extra sets)", flush=True)
            return row
        settings = {"row": name, **kw, "epochs": epochs, "quick": quick,
                    "train_per_class": train_per_class, "base_sha256": base,
                    "fragment_seed": FRAGMENT_SEED}
        rows.append(cached(folder / "row.json", fit, settings))
    return rows


def run(out_dir, threads: int = 1, quick: bool = False, epochs: int | None = None,
        train_per_class: int | None = None, pretrained: str | None = None) -> dict:
    from lorakit.plugins.lorabert.experiment import run_baseline, run_cpc2_row

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    frozen = not (quick or epochs or train_per_class or pretrained)
    epochs, train_per_class = amounts(quick, epochs, train_per_class)
    splits, sets = data(quick, train_per_class)
    test = splits["test"]
    rows = deep_rows(out, splits, sets, epochs, quick, train_per_class, pretrained)
    for kind in ("orf", "kmer", "length"):
        rows.append(run_baseline(kind, splits, extra=sets))
    cpc2 = run_cpc2_row(splits, extra=sets)
    if cpc2:
        rows.append(cpc2)
    for row in rows:
        _score_extras(row, sets)

    by = {r["name"]: r for r in rows}
    classic = [r for r in rows if r["name"] in (ORF, "k-mer LR", "length only")]
    best = {m: max(classic, key=lambda r, m=m: r[m]) for m in ("mcc", "auroc")}
    lora, full, orf = by["LoRA-BERT"], by["full fine-tuning"], by[ORF]
    labels = lora["labels"]
    figures = {
        "frozen_settings": int(frozen),
        "lora_mcc": lora["mcc"], "lora_auroc": lora["auroc"],
        "best_classic_mcc": best["mcc"]["mcc"], "best_classic_auroc": best["auroc"]["auroc"],
    }
    for m in ("mcc", "auroc"):
        figures.update(_gap(lora, best[m], labels, m, f"lora_{m}_minus_best_classic"))
        figures.update(_gap(lora, orf, labels, m, f"lora_{m}_minus_orf"))
    figures["goal_full_met"] = int(figures["lora_mcc_minus_orf"] >= 0
                                   and figures["lora_auroc_minus_orf"] >= 0)
    fragments_met = True
    for n in FRAGMENT_LENGTHS:
        frag_labels = [t.label for t in sets[f"frag{n}"]]
        figures[f"n_fragments_{n}"] = len(frag_labels)
        figures[f"n_fragments_{n}_lncrna"] = len(frag_labels) - sum(frag_labels)
        for m in ("mcc", "auroc"):
            for other, tag in ((orf, "orf"), (cpc2, "cpc2")):
                if other is None:
                    continue
                key = f"lora_{m}_minus_{tag}_at_{n}"
                figures.update(_gap(lora, other, frag_labels, m, key, probs=f"frag{n}"))
                fragments_met &= figures[key] > 0
            for r, tag in ((lora, "lora"), (orf, "orf")):
                figures[f"{tag}_{m}_drop_at_{n}"] = r[m] - r[f"{m}_{n}"]
    figures["goal_fragments_met"] = int(fragments_met)
    figures["cpc2_run"] = int(cpc2 is not None)  # 0: the fragment goal checked the ORF row only
    # does the MCC-best threshold move from full transcripts to fragments? (diagnostic)
    val_labels = [t.label for t in sets["val"]]
    figures["lora_best_threshold_val"] = best_threshold(val_labels, lora["extra"]["val"])[0]
    figures["lora_best_threshold_test"] = best_threshold(labels, lora["probs"])[0]
    for n in FRAGMENT_LENGTHS:
        frag_labels = [t.label for t in sets[f"frag{n}"]]
        thr, mcc = best_threshold(frag_labels, lora["extra"][f"frag{n}"])
        figures[f"lora_best_threshold_at_{n}"] = thr
        figures[f"lora_mcc_at_best_threshold_{n}"] = mcc
        figures[f"lora_mcc_valthr_at_{n}"] = lora[f"mcc_valthr_{n}"]
        figures[f"orf_mcc_valthr_at_{n}"] = orf[f"mcc_valthr_{n}"]
    figures.update({
        "lora_brier": lora["brier"], "lora_brier_ts": lora["brier_ts"],
        "lora_temperature": lora["temperature"], "orf_brier": orf["brier"],
        "lora_mouse_recall": lora["mouse_recall"], "orf_mouse_recall": orf["mouse_recall"],
        "lora_auroc_minus_length_only": lora["auroc"] - by["length only"]["auroc"],
        "lora_param_fraction": lora["trainable_params"] / full["trainable_params"],
        "lora_vs_full_train_time_ratio": lora["train_s"] / full["train_s"],
        "n_train": len(splits["train"]), "n_val": len(splits["val"]), "n_test": len(test),
        "n_mouse": len(sets["mouse"]), "epochs": epochs, "fragment_seed": FRAGMENT_SEED,
    })
    _plots(out, rows, sets, lora, len(test))
    table_rows = [{k: (round(r[k], 4) if isinstance(r[k], float) else r[k])
                   for k in COLUMNS if k in r} for r in rows]
    notes = (f"CPAT human test set (Wang et al. 2013), stratified split seed 0: "
             f"{len(splits['train'])} training transcripts (all models and baselines), "
             f"{len(splits['val'])} validation (temperatures only), {len(test)} held-out "
             f"test transcripts; {epochs} epoch(s) of fine-tuning; {threads} CPU thread(s). "
             "Fragments: one per test transcript at a random position (seed "
             f"{FRAGMENT_SEED}), transcripts shorter than the length skipped: "
             + ", ".join(f"{n} nt: {figures[f'n_fragments_{n}']} "
                         f"({figures[f'n_fragments_{n}_lncrna']} lncRNAs)"
                         for n in FRAGMENT_LENGTHS)
             + f". Mouse: {len(sets['mouse'])} RefSeq mRNAs from the ezLncPred 1.4 wheel "
             "(CPPred's mouse test set); `mouse_recall` is the share called coding at 0.5, "
             "recall only (the wheel's mouse non-coding file is snRNAs, no lncRNAs). "
             "`brier_ts`: Brier after temperature scaling fitted on validation (log loss); "
             "it changes neither AUROC nor any call at 0.5. `mcc_valthr_<n>`: MCC at the "
             "threshold that is MCC-best on validation fragments of that length. "
             "Base: "
             + (pretrained or "the embedded k-mer BERT (plugins/lorabert/assets/base: 4 layers of width 128, "
                               "512-codon windows)")
             + ". CPC2 uses its own shipped model"
             + (" (run)." if cpc2 else " (not installed: `make install` puts it in "
                ".venv/tools/cpc2).")
             + (" Frozen settings: this is a final run (see the suite's docstring)."
                if frozen else " Not the frozen settings (quick or overridden): not final."))
    return {"figures": figures, "rows": table_rows, "notes": notes}


def _plots(out: Path, rows: list[dict], sets: dict, lora: dict, n_test: int) -> None:
    plot_roc({r["name"]: (r["labels"], r["probs"]) for r in rows}, out / "roc.png",
             title=f"CPAT human test split (n={n_test})")
    plot_reliability({r["name"]: (r["labels"], r["probs"]) for r in rows},
                     out / "reliability.png", title="Reliability on the full test split")
    curves = {"full transcripts": (lora["labels"], lora["probs"]),
              "full, temperature-scaled": (lora["labels"], apply_temperature(
                  lora["probs"], lora["temperature"]))}
    for n in FRAGMENT_LENGTHS:
        curves[f"fragments {n} nt"] = ([t.label for t in sets[f"frag{n}"]],
                                       lora["extra"][f"frag{n}"])
    plot_reliability(curves, out / "reliability_lora_bert.png",
                     title="LoRA-BERT: reliability on full transcripts and fragments")
    _plot_fragments(rows, out / "fragments.png")


def _plot_fragments(rows: list[dict], path: Path) -> None:
    """MCC and AUROC of every row against fragment length, full transcripts at the right."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = [*range(len(FRAGMENT_LENGTHS)), len(FRAGMENT_LENGTHS)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, m in zip(axes, ("mcc", "auroc")):
        for r in rows:
            ax.plot(xs, [r[f"{m}_{n}"] for n in FRAGMENT_LENGTHS] + [r[m]], marker="o",
                    label=r["name"])
        ax.set_xticks(xs, [f"{n} nt" for n in FRAGMENT_LENGTHS] + ["full"])
        ax.set(xlabel="test sequences", ylabel=m.upper(), title=f"{m.upper()} on fragments")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    save_png(fig, path)


def _options(p) -> None:
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 2)")
    p.add_argument("--train-per-class", type=int, default=None,
                   help="training transcripts per class (default: all)")
    p.add_argument("--pretrained", default=None, help="k-mer BERT folder (default: embedded)")
    p.add_argument("--rows", nargs="+", choices=[kw["mode"] for _, kw in MODELS],
                   help="only fit these fine-tuned rows into OUT/runs and stop (several "
                        "processes on one --out add up; a later run without --rows reads "
                        "them back and writes the report)")


def _fit_rows(a) -> bool:
    """--rows: fit only those rows into OUT/runs, write no report."""
    if not a.rows:
        return False
    torch.set_num_threads(a.threads)
    epochs, per_class = amounts(a.quick, a.epochs, a.train_per_class)
    deep_rows(Path(a.out), *data(a.quick, per_class), epochs, a.quick, per_class,
              a.pretrained, only=a.rows)
    return True


if __name__ == "__main__":
    from lorakit.benchmarks.common.command_line import suite_main

    suite_main(SUITE, __doc__, run, options=_options, worker=_fit_rows,
               keywords=lambda a: {"epochs": a.epochs, "train_per_class": a.train_per_class,
                                   "pretrained": a.pretrained})
