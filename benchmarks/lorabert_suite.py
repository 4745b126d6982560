"""Benchmark suite `lorabert`: LoRA-BERT against full fine-tuning, a frozen encoder and the
classic coding-potential tools, on CPAT's human set (held-out test split, seed 0).

Rows: LoRA-BERT (LoRA r=8 on query/value + head), full fine-tuning, frozen encoder +
trained head, ORF/Fickett/hexamer LR, k-mer LR, length only, and CPC2 when its `cpc2`
command is installed (its own shipped model; nothing trained here). Columns: accuracy,
MCC, AUROC on the test split, trainable parameters, training time, prediction time per
1,000 transcripts. The paper's claim at small scale: LoRA-BERT at least matches the best
classic baseline on MCC and AUROC while training <= 5% of the parameters that full
fine-tuning trains (figures `lora_mcc_minus_best_classic`, `lora_auroc_minus_best_classic`,
`lora_param_fraction`; the `..._ci95_lo/hi` figures bound each gap by a paired bootstrap
over the test transcripts).

    run(out_dir, threads=1, quick=False) -> {"figures", "rows", "notes"} (+ roc.png)
    quick: 150 training transcripts per class, 1 epoch, 200 test transcripts per class.
    pretrained: another k-mer BERT folder than the embedded base (`python
    benchmarks/lorabert_suite.py --pretrained DIR`), to compare bases.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from lorakit.domains.genomics.metrics import paired_bootstrap, plot_roc

SUITE = "lorabert"
COLUMNS = ["name", "accuracy", "mcc", "auroc", "sensitivity", "specificity",
           "trainable_params", "train_s", "predict_s_per_1000"]


def _gap_to_best(lora: dict, best: dict, metric: str) -> dict[str, float]:
    """LoRA-BERT minus the best classic baseline on `metric`, with the 95% interval of a
    paired bootstrap over the test transcripts: a gap inside it is test-set noise."""
    gap = paired_bootstrap(lora["labels"], lora["probs"], best["probs"], metric)
    return {f"lora_{metric}_minus_best_classic": gap["diff"],
            f"lora_{metric}_minus_best_classic_ci95_lo": gap["lo"],
            f"lora_{metric}_minus_best_classic_ci95_hi": gap["hi"]}


def run(out_dir, threads: int = 1, quick: bool = False, epochs: int | None = None,
        train_per_class: int | None = None, pretrained: str | None = None) -> dict:
    from lorakit.plugins.lorabert.experiment import (
        cut_per_class,
        run_baseline,
        run_cpc2_row,
        run_model,
        split_items,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    epochs = epochs or (1 if quick else 2)
    train_per_class = train_per_class or (150 if quick else None)
    splits = split_items("cpat_human", train_per_class=train_per_class)
    if quick:
        splits["test"] = cut_per_class(splits["test"], 200, seed=1)
    rows = []
    for name, kw in (("LoRA-BERT", {"mode": "lora", "lr": 2e-3}),
                     ("full fine-tuning", {"mode": "full", "lr": 3e-4}),
                     ("frozen encoder + head", {"mode": "head", "lr": 1e-2})):
        t0 = time.time()
        row = run_model(name, splits, out / "runs", epochs=epochs, pretrained=pretrained,
                        **kw)
        row.pop("module")
        rows.append(row)
        print(f"[lorabert suite] {name}: MCC {row['mcc']:.3f} AUROC {row['auroc']:.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    for kind in ("orf", "kmer", "length"):
        rows.append(run_baseline(kind, splits))
    cpc2 = run_cpc2_row(splits)
    if cpc2:
        rows.append(cpc2)

    by = {r["name"]: r for r in rows}
    classic = [r for r in rows if r["name"] in ("ORF/Fickett/hexamer LR", "k-mer LR",
                                                "length only")]
    best = {m: max(classic, key=lambda r, m=m: r[m]) for m in ("mcc", "auroc")}
    lora, full = by["LoRA-BERT"], by["full fine-tuning"]
    figures = {
        "lora_mcc": lora["mcc"], "lora_auroc": lora["auroc"],
        "best_classic_mcc": best["mcc"]["mcc"], "best_classic_auroc": best["auroc"]["auroc"],
        **_gap_to_best(lora, best["mcc"], "mcc"),
        **_gap_to_best(lora, best["auroc"], "auroc"),
        "lora_auroc_minus_length_only": lora["auroc"] - by["length only"]["auroc"],
        "lora_param_fraction": lora["trainable_params"] / full["trainable_params"],
        "lora_vs_full_train_time_ratio": lora["train_s"] / full["train_s"],
        "n_train": len(splits["train"]), "n_test": len(splits["test"]), "epochs": epochs,
    }
    plot_roc({r["name"]: (r["labels"], r["probs"]) for r in rows}, out / "roc.png",
             title=f"CPAT human test split (n={len(splits['test'])})")
    table_rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                   if k in COLUMNS} for r in rows]
    notes = (f"CPAT human test set (Wang et al. 2013), stratified split seed 0: "
             f"{len(splits['train'])} training transcripts (all models and baselines), "
             f"{len(splits['test'])} held-out test transcripts; {epochs} epoch(s) of "
             f"fine-tuning; {threads} CPU thread(s). Base: "
             + (pretrained or "the embedded k-mer BERT (plugins/lorabert/base)")
             + ". CPC2 uses its own shipped model"
             + (" (run)." if cpc2 else " (not installed: `make install` puts it in .venv/tools/cpc2)."))
    return {"figures": figures, "rows": table_rows, "notes": notes}


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_out/lorabert")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--train-per-class", type=int, default=None)
    p.add_argument("--pretrained", default=None, help="k-mer BERT folder (default: embedded)")
    a = p.parse_args()
    from lorakit.bench import machine, write_results
    res = run(a.out, a.threads, a.quick, a.epochs, a.train_per_class, a.pretrained)
    res = write_results(Path(a.out), {"suite": SUITE, "machine": machine(), **res})
    print(json.dumps(res["figures"], indent=1))
