"""`lorakit lorabert demo`: LoRA-BERT and the classic baselines on CPAT's human data.

Fetches CPAT's human test set (cached), splits it stratified (seed 0), fine-tunes the
compact embedded k-mer BERT (plugins/lorabert/assets/base_compact: 2 layers, 256-codon
windows) with LoRA on part of the training split, fits the baselines on the
same transcripts, and scores everything on the held-out test split: results.json,
report.md / report.html (lorakit.reports.demo), roc.png and LoRA-BERT's predictions.tsv in
`out_dir`; returns the headline figures.

The compact base, not the default one (4 layers, 512-codon windows, chosen on validation
with the full training split): on the demo's 400 transcripts per class it fits in a
quarter of the time and scores higher on validation (benchmarks/results/
lorabert-base-selection/demo_sizes.txt). `pretrained` picks another base folder.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lorakit.domains.genomics.metrics import markdown_table, plot_roc
from lorakit.reports.demo import Headline, write_demo_report

COLUMNS = ["name", "accuracy", "sensitivity", "specificity", "precision", "f1", "mcc",
           "auroc", "trainable_params", "train_s"]


def demo(out_dir: Path = Path("lorabert_demo"), threads: int = 1, train_per_class: int = 400,
         epochs: int = 2, test_per_class: int | None = 300,
         pretrained: str | None = None) -> dict:
    from lorakit.plugins.lorabert.experiment import (
        cut_per_class,
        run_baseline,
        run_cpc2_row,
        run_model,
        split_items,
    )

    from .module import COMPACT_DIR
    from .predict_tsv import PredictionRow, write_predictions
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    splits = split_items("cpat_human", train_per_class=train_per_class)
    if test_per_class:
        splits["test"] = cut_per_class(splits["test"], test_per_class, seed=1)
    print(f"lorabert demo: CPAT human, {len(splits['train'])} training and "
          f"{len(splits['test'])} test transcripts", flush=True)
    base = pretrained or str(COMPACT_DIR)
    lora = run_model("LoRA-BERT", splits, out, epochs=epochs, mode="lora", lr=2e-3,
                     pretrained=base)
    module = lora.pop("module")
    rows = [lora] + [run_baseline(k, splits) for k in ("orf", "kmer", "length")]
    cpc2 = run_cpc2_row(splits)
    rows += [cpc2] if cpc2 else []
    table_rows = [{k: v for k, v in r.items() if k not in ("probs", "labels", "extra")}
                  for r in rows]
    plot_roc({r["name"]: (r["labels"], r["probs"]) for r in rows}, out / "roc.png",
             title="CPAT human, held-out test split")
    from lorakit.domains.genomics.features import longest_orf
    pred_rows = []
    for t, p in zip(splits["test"], lora["probs"]):
        orf = longest_orf(t.seq)
        n = module.windows_along(module.windows_of(t.seq))
        pred_rows.append(PredictionRow(t.id, len(t.seq), orf.length if orf else 0, p,
                                       p >= module.threshold, n, 1.0))
    write_predictions(pred_rows, out / "predictions.tsv")
    table = markdown_table(table_rows, COLUMNS)
    print(table, flush=True)
    by = {r["name"]: r for r in rows}
    figures = {"lora_bert_auroc": by["LoRA-BERT"]["auroc"], "lora_bert_mcc": by["LoRA-BERT"]["mcc"],
               "orf_lr_auroc": by["ORF/Fickett/hexamer LR"]["auroc"],
               "orf_lr_mcc": by["ORF/Fickett/hexamer LR"]["mcc"],
               "kmer_lr_auroc": by["k-mer LR"]["auroc"],
               "length_only_auroc": by["length only"]["auroc"],
               "n_train": len(splits["train"]), "n_test": len(splits["test"])}
    classic = "ORF/Fickett/hexamer LR"
    goal = f"the issue's goal: at least match the {classic} baseline"
    write_demo_report(
        out, "lorabert", "lorabert demo: LoRA-BERT and the classic baselines on CPAT human",
        [Headline("MCC, LoRA-BERT", by["LoRA-BERT"]["mcc"], "", by[classic]["mcc"], classic, goal),
         Headline("AUROC, LoRA-BERT", by["LoRA-BERT"]["auroc"], "", by[classic]["auroc"], classic,
                  goal),
         Headline("trainable parameters, LoRA-BERT", by["LoRA-BERT"]["trainable_params"], "",
                  None, "", "LoRA: a small share of the model is trained")],
        figures, [{c: r.get(c) for c in COLUMNS} for r in table_rows],
        f"CPAT human data (GPL-2, fetched and cached, not shipped), stratified split seed 0: "
        f"LoRA-BERT and the baselines trained on the same {len(splits['train'])} "
        f"transcripts, scored on {len(splits['test'])} held-out test transcripts; base: "
        f"{base}. "
        "LoRA-BERT's test predictions: predictions.tsv.",
        units={"train_s": "s"}, plots=["roc.png"])
    return figures
