"""Which k-mer BERT base LoRA-BERT should ship with, chosen on validation only.

    python -m lorakit.benchmarks.studies.lorabert_base_selection --out DIR \
        --base compact=plugins/lorabert/base_compact --base grown=/work/lorabert_pretrain/X \
        [--seeds 0 1 2] [--threads 1] [--quick]

For each base and seed, the suite's LoRA-BERT row (`suites.lorabert.MODELS`, its epochs,
the full training split) is fitted and scored on the validation split and on fragments
of it (300/600/1,200 nt, `suites.lorabert.fragment_sets`): the test split is never read.
The validation split alone cannot separate bases a few errors apart, so each base gets
several seeds (the seed drives the head init, LoRA init, dropout and batch order) and
the table gives mean ± SD. The rule, fixed before any run: the base with the higher
mean validation MCC on full transcripts; if the means differ by less than the larger
SD, the smaller base (the shipped one stays unless another is clearly better).

Each (base, seed) run is written to `DIR/runs/<base>-seed<k>.json` when it ends and
skipped when present with the same settings (the seed and the SHA-256 of the base's
weights, not its path), so the selection can be continued over
several sessions with the same command. `DIR/results.json` holds every run, the
per-base means and the choice.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lorakit.reports.bench import cached

from ..suites.lorabert import EPOCHS, FRAGMENT_LENGTHS, MODELS, base_id, fragment_sets


def one_run(folder: str, seed: int, epochs: int, splits: dict, sets: dict) -> dict:
    from lorakit.domains.genomics.metrics import binary_metrics
    from lorakit.plugins.lorabert.experiment import run_model

    kw = dict(MODELS)["LoRA-BERT"]
    on_val = {**splits, "test": splits["val"]}       # run_model scores its "test" split
    with tempfile.TemporaryDirectory() as fits:     # the adapters are not kept
        row = run_model("LoRA-BERT", on_val, fits, epochs=epochs, seed=seed,
                        pretrained=folder, extra=sets, **kw)
    result = {"val_mcc": row["mcc"], "val_auroc": row["auroc"], "train_s": row["train_s"],
              "trainable_params": row["trainable_params"], "total_params": row["total_params"]}
    for n in FRAGMENT_LENGTHS:
        labels = [t.label for t in sets[f"valfrag{n}"]]
        m = binary_metrics(labels, row["extra"][f"valfrag{n}"])
        result[f"val_mcc_{n}"], result[f"val_auroc_{n}"] = m["mcc"], m["auroc"]
    return result


def choose(per_base: dict[str, list[dict]], order: list[str]) -> str:
    """The rule of the module docstring; `order`: the bases from the smallest up."""
    stats = {b: (statistics.fmean(r["val_mcc"] for r in runs),
                 statistics.stdev([r["val_mcc"] for r in runs]) if len(runs) > 1 else 0.0)
             for b, runs in per_base.items()}
    best = max(stats, key=lambda b: stats[b][0])
    smallest = order[0]
    if best != smallest and stats[best][0] - stats[smallest][0] < max(stats[best][1],
                                                                       stats[smallest][1]):
        return smallest
    return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--base", action="append", required=True,
                   help="NAME=FOLDER, smallest base first (repeat)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true",
                   help="100 training transcripts per class, 1 epoch: a smoke run")
    a = p.parse_args(argv)
    from lorakit.plugins.lorabert.experiment import cut_per_class, split_items

    torch.set_num_threads(a.threads)
    bases = dict(b.split("=", 1) for b in a.base)
    epochs = 1 if a.quick else EPOCHS
    out = Path(a.out)
    splits = split_items("cpat_human", train_per_class=100 if a.quick else None)
    if a.quick:
        splits["val"] = cut_per_class(splits["val"], 50, seed=1)
    sets = fragment_sets(splits["val"], prefix="valfrag")
    per_base: dict[str, list[dict]] = {}
    for name, folder in bases.items():
        # keyed by the weights, not the path: a base moved or another checkout reuses
        weights = base_id(folder)
        for seed in a.seeds:
            settings = {"base_sha256": weights, "seed": seed, "epochs": epochs,
                        "quick": a.quick, "model": dict(MODELS)["LoRA-BERT"]}

            def fit(name=name, folder=folder, seed=seed) -> dict:
                t0 = time.time()
                result = one_run(folder, seed, epochs, splits, sets)
                print(f"[base selection] {name} seed {seed}: validation MCC "
                      f"{result['val_mcc']:.3f} ({time.time() - t0:.0f} s)", flush=True)
                return result
            per_base.setdefault(name, []).append(
                cached(out / "runs" / f"{name}-seed{seed}.json", fit, settings))
    summary = {}
    for name, runs in per_base.items():
        summary[name] = {}
        for key in runs[0]:
            values = [r[key] for r in runs]
            summary[name][key] = statistics.fmean(values)
            summary[name][f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    result = {"bases": bases, "seeds": a.seeds, "epochs": epochs, "quick": a.quick,
              "summary": summary, "chosen": choose(per_base, list(bases))}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({"chosen": result["chosen"],
                      "val_mcc": {b: (round(s["val_mcc"], 4), round(s["val_mcc_sd"], 4))
                                  for b, s in summary.items()}}, indent=1))
    return result


if __name__ == "__main__":
    main()
