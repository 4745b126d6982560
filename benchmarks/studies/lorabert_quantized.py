"""LoRA-BERT on a full-precision and on an NF4 base, at the demo's size.

    python -m lorakit.benchmarks.studies.lorabert_quantized [--threads 1] [--out DIR]

The demo's fit (`lorakit lorabert demo`: CPAT human, 400 training transcripts per class,
300 test transcripts per class, the compact embedded base, 2 epochs, LoRA r=8 on query
and value, lr 2e-3, seed 0) through the plugin's own LightningModule, once on the fp32
base and once with `LoRAConfig(base_quantization="nf4")`, which quantizes the adapted
query and value matrices (bitsandbytes NF4, group 64, double-quantized scales). Also the
weight bytes of the base: of the adapted matrices, and of every encoder Linear as
`lorakit.quantize(model, "nf4")` would hold them (the classifier kept, as QLoRA keeps
its output layer). Prints a markdown table, the one in plugins/lorabert/README.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

import lorakit
from lorakit.quiet import quiet_third_party

TARGETS = ["*.query", "*.value"]


def base_bytes() -> dict[str, int]:
    from lorakit.domains.genomics.kmer_bert import load_classifier
    from lorakit.plugins.lorabert.module import COMPACT_DIR

    adapted = lorakit.quantize(load_classifier(COMPACT_DIR, num_labels=2), "nf4",
                               targets=TARGETS)
    every = lorakit.quantize(load_classifier(COMPACT_DIR, num_labels=2), "nf4")
    return {"adapted_fp32": adapted.bytes_before, "adapted_nf4": adapted.bytes_after,
            "encoder_linear_fp32": every.bytes_before, "encoder_linear_nf4": every.bytes_after,
            "encoder_linear_modules": len(every.quantized)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("lorabert_quantized"))
    a = p.parse_args(argv)
    quiet_third_party()
    torch.set_num_threads(a.threads)
    from lorakit.plugins.lorabert.experiment import cut_per_class, run_model, split_items
    from lorakit.plugins.lorabert.module import ADAPTER, COMPACT_DIR

    splits = split_items("cpat_human", train_per_class=400)
    splits["test"] = cut_per_class(splits["test"], 300, seed=1)
    rows = []
    for name, quant in (("LoRA-BERT, fp32 base", None), ("LoRA-BERT, NF4 base", "nf4")):
        adapter = dataclasses.replace(ADAPTER, base_quantization=quant)
        row = run_model(name, splits, a.out, epochs=2, mode="lora", lr=2e-3,
                        pretrained=str(COMPACT_DIR), adapter=adapter)
        rows.append({k: row[k] for k in ("name", "accuracy", "mcc", "auroc", "train_s")})
    result = {"rows": rows, "bytes": base_bytes(), "threads": a.threads,
              "n_train": len(splits["train"]), "n_test": len(splits["test"])}
    print(json.dumps(result, indent=2))
    print("| base | test accuracy | MCC | AUROC | fit (s) |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['accuracy']:.3f} | {r['mcc']:.3f} | {r['auroc']:.3f} | "
              f"{r['train_s']:.0f} |")
    return result


if __name__ == "__main__":
    main()
