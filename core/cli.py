"""The `lorakit` command.

    lorakit plugins                                  installed plugins, and how to add the rest
    lorakit <plugin> fit|validate|test|predict ...   that plugin's LightningCLI (--help: every option)
    lorakit <plugin> demo [--out DIR]                its embedded default, end to end
    lorakit demo --all [--out DIR]                   every installed plugin's demo + an index page
    lorakit bench --suite NAME|all --out DIR         benchmark suites: results.json, report.md/.html, PNGs
    lorakit adapter inspect|merge|analyze|export-peft ...   work on adapter files
    lorakit adapter merge-many A B C --method lego --out M.safetensors   several adapters -> one
    lorakit serve BASE ADAPTERS... [--port 8000]    many adapters, one base, OpenAI-compatible HTTP

Errors that lorakit raises on purpose (bad input, wrong base model) are printed as
one line, `lorakit: error: ...`, with exit status 2; anything else is a bug and
keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from .errors import LoraKitError
from .quiet import quiet_third_party
from .registry import Plugin, bench_suites, get_plugin, plugins, resolve
from .serving.command import add_serve

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def set_threads(threads: int | None) -> None:
    if threads:
        import torch
        torch.set_num_threads(threads)


# --- lorakit plugins -------------------------------------------------------------------
def cmd_plugins(_args) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="lorakit plugins")
    for col in ("name", "summary", "installed", "to install"):
        table.add_column(col)
    for plugin in plugins().values():
        ok = plugin.installed
        table.add_row(plugin.name, plugin.summary, "yes" if ok else "no",
                      "" if ok else escape(plugin.install_hint))
    Console(width=160).print(table)
    return 0


# --- lorakit <plugin> ... ----------------------------------------------------------------
def run_lightning_cli(plugin: Plugin, argv: list[str]):
    """`lorakit <plugin> fit ...`: LightningCLI with the plugin's default config."""
    from .lightning_cli import LorakitCLI

    module_cls, data_cls = plugin.load("module"), plugin.load("datamodule")
    defaults = {cmd: {"default_config_files": [plugin.default_config],
                      "prog": f"lorakit {plugin.name} {cmd}"} for cmd in LIGHTNING_COMMANDS}
    defaults["description"] = f"lorakit {plugin.name}: {plugin.summary}"
    return LorakitCLI(module_cls, data_cls, args=argv, parser_kwargs=defaults,
                      save_config_kwargs={"overwrite": True})


def run_plugin_demo(plugin: Plugin, out: Path, threads: int) -> dict:
    set_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    return plugin.load("demo")(out, threads=threads) or {}


def cmd_plugin(name: str, argv: list[str]) -> int:
    plugin = get_plugin(name)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        threads = _pop_threads(argv)
        set_threads(threads)
        run_lightning_cli(plugin, argv)
        return 0
    if argv and argv[0] == "demo":
        p = argparse.ArgumentParser(prog=f"lorakit {name} demo",
                                    description=f"Run {name}'s embedded default end to end.")
        p.add_argument("--out", type=Path, default=Path("reports") / name,
                       help="report folder (default: reports/<plugin>)")
        p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
        a = p.parse_args(argv[1:])
        figures = run_plugin_demo(plugin, a.out, a.threads)
        print(json.dumps(figures, indent=2, default=str))
        html = a.out / "report.html"
        print(f"report: {html if html.is_file() else a.out / 'report.md'}")
        return 0
    if argv and argv[0] in plugin.commands:
        return resolve(plugin.commands[argv[0]])(argv[1:]) or 0
    commands = ", ".join((*LIGHTNING_COMMANDS, "demo", *plugin.commands))
    print(f"usage: lorakit {name} {{{commands}}} [--help]\n\n{plugin.summary}")
    return 0 if argv and argv[0] in ("-h", "--help") else 2


def _pop_threads(argv: list[str]) -> int | None:
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i:i + 2]
            return int(value)
        if a.startswith("--threads="):
            del argv[i]
            return int(a.split("=", 1)[1])
    return None


# --- lorakit demo --all ------------------------------------------------------------------
def cmd_demo(args) -> int:
    from .reports.index import write_index

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    found = plugins()
    names = list(found) if args.all or not args.names else args.names
    entries = []
    for name in names:
        plugin = found.get(name) or get_plugin(name)
        if not plugin.installed:
            entries.append({"name": name, "status": f"skipped: {plugin.install_hint}"})
            continue
        print(f"== demo: {name}", flush=True)
        try:
            figures = run_plugin_demo(plugin, out / name, args.threads)
        except Exception as err:  # one broken demo must not hide the others' reports
            traceback.print_exc()
            entries.append({"name": name, "status": f"FAILED: {type(err).__name__}: {err}"})
            continue
        entries.append({"name": name, "status": "ok", "folder": name, "figures": figures})
    if args.all or not args.names:
        print("== benchmark: core", flush=True)
        from .reports.bench import run_suite
        result = run_suite("core", out / "core-benchmark", threads=args.threads, quick=args.quick)
        entries.append({"name": "core benchmark", "status": "ok", "folder": "core-benchmark",
                        "figures": result["figures"]})
    index = write_index(out, entries)
    print(f"index: {index}")
    failed = [e["name"] for e in entries if e["status"].startswith("FAILED")]
    if failed:
        print(f"lorakit: error: demos failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# --- lorakit bench -----------------------------------------------------------------------
def cmd_bench(args) -> int:
    from .reports.bench import run_suite

    suites = bench_suites()
    names = sorted(suites) if args.suite == "all" else [args.suite]
    for name in names:
        if name not in suites:
            raise LoraKitError(f"no benchmark suite {name!r}; available: {', '.join(sorted(suites))}")
        out = args.out / name if args.suite == "all" else args.out
        result = run_suite(name, out, threads=args.threads, quick=args.quick)
        print(json.dumps(result["figures"], indent=2))
        print(f"report: {out / 'report.html'}")
    return 0


# --- lorakit adapter ---------------------------------------------------------------------
def cmd_adapter_inspect(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .analysis.inspect import describe
    from .io.adapter_file import read_adapter

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
    from .compose.merge_file import merge_into_state_file

    n = merge_into_state_file(args.adapter, args.base, args.out, prefix=args.prefix)
    print(f"merged {n} matrices into {args.out}")
    return 0


def cmd_adapter_merge_many(args) -> int:
    import time

    from .compose.merge_many import merge_adapters

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

    from .analysis.intruders import analyze_adapter, plot_analysis

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
    from .io.peft import export_peft

    out = export_peft(args.file, args.out_dir)
    print(f"PEFT adapter written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    names = ", ".join(plugins()) or "none installed"
    parser = argparse.ArgumentParser(
        prog="lorakit",
        description="One LoRA core, many domains. Plugins: " + names + ". "
                    "`lorakit <plugin> --help` for a plugin's commands.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list installed plugins")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("demo", help="run plugin demos and write one report folder with an index")
    p.add_argument("names", nargs="*", help="plugins to run (default: all installed)")
    p.add_argument("--all", action="store_true", help="every installed plugin, plus the core benchmark")
    p.add_argument("--out", type=Path, default=Path("reports/demo"), help="report folder")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--quick", action="store_true", help="a smaller core benchmark")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="run benchmark suites")
    p.add_argument("--suite", required=True, help="suite name, or 'all'")
    p.add_argument("--out", type=Path, default=Path("reports/bench"), help="output folder")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.set_defaults(func=cmd_bench)

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
                        "model, not an adapter; `adapter merge-many` combines adapters.")
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
    add_merge_many(asub)
    q = asub.add_parser("export-peft", help="write a PEFT adapter folder")
    q.add_argument("file", type=Path)
    q.add_argument("out_dir", type=Path)
    q.set_defaults(func=cmd_adapter_export)
    add_serve(sub)
    return parser


def add_merge_many(asub) -> None:
    from .compose.merge_many import METHODS, OUTPUT_NORMS

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
    q.set_defaults(func=cmd_adapter_merge_many)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_third_party()
    try:
        reserved = {"plugins", "demo", "bench", "adapter", "serve", "-h", "--help"}
        if argv and argv[0] not in reserved and not argv[0].startswith("-"):
            return cmd_plugin(argv[0], argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return args.func(args)
    except LoraKitError as err:
        print(f"lorakit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
