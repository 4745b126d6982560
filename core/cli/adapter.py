"""`lorakit adapter inspect|merge|merge-many|analyze|export-peft`: work on adapter files.

Each command imports the core module it calls when it runs, so `lorakit adapter --help`
loads neither torch nor safetensors.
"""
from __future__ import annotations

import json
from pathlib import Path


def cmd_adapter_inspect(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from lorakit.analysis.inspect import describe
    from lorakit.io.adapter_file import read_adapter

    meta, tensors = read_adapter(args.file)
    info = describe(meta, tensors, tol=args.tol)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    console = Console(width=140)
    head = Table(title=f"adapter {args.file}", show_header=False)
    for key in ("name", "method", "rank", "alpha", "scale", "rslora", "targets",
                "modules_to_save", "format", "lorakit_version", "base_fingerprint",
                "parameters", "file_bytes"):
        head.add_row(key, str(info[key]))
    for key, value in info["options"].items():
        head.add_row(f"options.{key}", str(value))
    for key, value in info["extra"].items():
        head.add_row(f"extra.{key}", str(value))
    console.print(head)
    mods = Table(title="per module")
    base_cols = ("module", "kind", "shape", "rank", "effective_rank", "sparsity")
    # a method's own per-module facts (a mixture's experts, load, router entropy)
    more = list(dict.fromkeys(k for row in info["modules"] for k in row if k not in base_cols))
    for col in ("module", "kind", "weight shape", "rank", "effective rank", "sparsity", *more):
        mods.add_column(col.replace("_", " "))
    for row in info["modules"]:
        mods.add_row(row["module"], row["kind"], "x".join(map(str, row["shape"])),
                     str(row["rank"]),
                     str(row["effective_rank"]), f"{row['sparsity']:.1%}",
                     *(str(row.get(k, "")) for k in more))
    console.print(mods)
    return 0


def cmd_adapter_merge(args) -> int:
    from lorakit.compose.merge_file import merge_into_state_file
    from lorakit.io.adapter_file import read_adapter

    n = merge_into_state_file(args.adapter, args.base, args.out, prefix=args.prefix)
    print(f"merged {n} matrices into {args.out}")
    schemes = sorted({r["scheme"] for r in
                      (read_adapter(args.adapter)[0].get("quantization") or {}).values()})
    if schemes:    # QLoRA's usual end: its adapter folded into the full-precision weights
        print(f"note: the adapter was trained on a quantized base ({', '.join(schemes)}); "
              "it is merged into the weights given, as they are")
    return 0


def cmd_adapter_merge_many(args) -> int:
    import time

    from lorakit.compose.merge_many import merge_adapters

    start = time.perf_counter()
    merged = merge_adapters(args.adapters, method=args.method, k=args.k, weights=args.weights,
                            seed=args.seed, n_init=args.n_init, output_norm=args.output_norm,
                            density=args.density, drop_saved=args.drop_saved, out=args.out)
    seconds = time.perf_counter() - start
    print(f"merged {len(args.adapters)} adapters with {args.method} into {args.out}: rank "
          f"{merged.rank}, {len(merged.meta['kinds'])} modules, {seconds:.2f} s")
    return 0


def cmd_adapter_analyze(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from lorakit.analysis.intruders import analyze_adapter, plot_analysis

    report = analyze_adapter(args.adapter, args.base, prefix=args.prefix, k=args.k,
                             threshold=args.threshold)
    if args.png:
        report["png"] = str(plot_analysis(report, args.png))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    table = Table(title=f"{args.adapter} on {args.base}: intruder dimensions in the top "
                        f"{args.k} singular vectors (max |cos| < {args.threshold:g})")
    for col in ("module", "kind", "weight shape", "intruders", "effective rank of dW",
                "spectral norm of dW"):
        table.add_column(col)
    for row in report["modules"]:
        table.add_row(row["module"], row["kind"], "x".join(map(str, row["shape"])),
                      str(row["intruders"]), f"{row['effective_rank']:.2f}",
                      f"{row['spectral_norm']:.4g}")
    console = Console(width=140)
    console.print(table)
    console.print(f"{report['total_intruders']} intruder dimensions in "
                  f"{len(report['modules'])} matrices"
                  + (f"; chart: {report['png']}" if args.png else ""))
    return 0


def cmd_adapter_export(args) -> int:
    from lorakit.io.peft import export_peft

    out = export_peft(args.file, args.out_dir)
    print(f"PEFT adapter written to {out}")
    return 0


def add_adapter(sub, needed=None) -> None:
    """The `adapter` command and its actions; `merge-many`'s options (whose choices come
    from lorakit.compose.merge_many, which imports torch) only when `needed` names it."""
    p = sub.add_parser("adapter", help="inspect, merge, merge-many, analyze or export adapter "
                       "files")
    asub = p.add_subparsers(dest="adapter_command", metavar="ACTION", required=True)
    q = asub.add_parser("inspect", help="metadata, parameter count, per-module rank and sparsity")
    q.add_argument("file", type=Path)
    q.add_argument("--tol", type=float, default=1e-3, help="|lambda| at or below this counts as zero")
    q.add_argument("--json", action="store_true", help="print JSON instead of tables")
    q.set_defaults(func=cmd_adapter_inspect)
    q = asub.add_parser("merge", help="fold an adapter into base WEIGHTS (a .safetensors "
                        "state dict): W + dW written as a new weights file. One adapter into a "
                        "model; to combine several adapters into one adapter, see merge-many",
                        description="Fold one adapter into a base model's weights: every "
                        "adapted W becomes W + dW in a new weights file. The result is a "
                        "model, not an adapter; `adapter merge-many` combines adapters. An "
                        "adapter trained on a quantized base (QLoRA) merges into the "
                        "full-precision weights given; a live quantized model merges with "
                        "Adapters.merge(requantize=True).")
    q.add_argument("adapter", type=Path, help="lorakit adapter file")
    q.add_argument("base", type=Path, help="base weights as .safetensors (e.g. model.safetensors)")
    q.add_argument("out", type=Path, help="merged weights to write (.safetensors)")
    q.add_argument("--prefix", default="", help="prefix of the module paths in the base file")
    q.set_defaults(func=cmd_adapter_merge)
    q = asub.add_parser(
        "analyze", help="intruder dimensions (Shuttleworth et al. 2024) of W + dW against "
        "the base weights, with dW's effective rank and spectral norm; writes nothing "
        "unless --png",
        description="Per adapted matrix: how many of the fine-tuned weight's top-k singular "
                    "vectors are intruder dimensions (max |cos| with every singular vector "
                    "of the base weight below the threshold), and the effective rank and "
                    "spectral norm of the update dW. The base is read, never changed.")
    q.add_argument("adapter", type=Path, help="lorakit adapter file")
    q.add_argument("--base", type=Path, required=True,
                   help="base weights as .safetensors (e.g. model.safetensors)")
    q.add_argument("--prefix", default="", help="prefix of the module paths in the base file")
    q.add_argument("--k", type=int, default=10,
                   help="top singular vectors checked (default 10, the paper's)")
    q.add_argument("--threshold", type=float, default=0.5,
                   help="max |cos| below which a direction is an intruder (default 0.5)")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--png", type=Path, help="also write a bar chart to this PNG file")
    q.set_defaults(func=cmd_adapter_analyze)
    q = asub.add_parser(
        "merge-many", help="combine SEVERAL adapters into ONE adapter file (LoRA-LEGO, "
        "concatenation or PEFT's merges); the base weights are not touched",
        description="Merge adapters of one base into one plain-LoRA adapter file that "
                    "`lorakit.load_adapter` loads. lego: LoRA-LEGO (Zhao et al., ICLR 2025): "
                    "k-means over every input's rank-1 units per module, centroids as the "
                    "merged ranks, parameter then output reweighting. concat: exact, rank = "
                    "sum of ranks, dW = sum of the weighted updates. peft-<type>: PEFT's own "
                    "add_weighted_adapter(combination_type=<type>). Adapters for another base, "
                    "and DoRA (no rank-1 units), are refused by name.")
    q.set_defaults(func=cmd_adapter_merge_many)
    if needed is None or "merge-many" in needed:
        add_merge_many_options(q)
    q = asub.add_parser("export-peft", help="write a PEFT adapter folder")
    q.add_argument("file", type=Path)
    q.add_argument("out_dir", type=Path)
    q.set_defaults(func=cmd_adapter_export)


def add_merge_many_options(q) -> None:
    from lorakit.compose.merge_many import METHODS, OUTPUT_NORMS

    q.add_argument("adapters", nargs="+", type=Path, help="lorakit adapter files to merge")
    q.add_argument("--method", choices=METHODS, default="lego", metavar="METHOD",
                   help="lego (default), concat, or peft-<type> with <type> one of PEFT's "
                        "combination types: " + ", ".join(m.removeprefix("peft-")
                                                          for m in METHODS[2:]))
    q.add_argument("--out", type=Path, required=True,
                   help="merged adapter file to write (.safetensors)")
    q.add_argument("--k", type=int, default=None,
                   help="merged rank: lego's cluster count (default: the largest input rank) "
                        "and the svd_rank of PEFT's *svd types (default: PEFT's, the largest "
                        "input rank); other methods ignore it")
    q.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one factor per adapter on its update (default 1 each: the sum)")
    q.add_argument("--seed", type=int, default=0, help="lego: KMeans random_state (default 0)")
    q.add_argument("--n-init", type=int, default=10,
                   help="lego: KMeans restarts with k-means++ init, the best kept (default 10)")
    q.add_argument("--output-norm", choices=OUTPUT_NORMS, default="mean",
                   help="lego's output reweighting: scale each module's merged update to the "
                        "inputs' mean norm (mean, default: as large as one input's update), "
                        "to the norm of their sum (sum: concatenation's), or not at all (none)")
    q.add_argument("--density", type=float, default=0.5,
                   help="PEFT's ties / dare / magnitude_prune types: fraction of entries kept "
                        "(default 0.5)")
    q.add_argument("--drop-saved", action="store_true",
                   help="merge adapters that train modules in full (modules_to_save, e.g. a "
                        "classifier head) by leaving those modules out of the merged file")


