"""The `lorakit` command line: its commands, and `main`.

`lorakit --help` builds every command's name and one-line help but only the options of
the command being run, so no command pays for another's imports.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lorakit.errors import LoraKitError
from lorakit.quiet import quiet_third_party
from lorakit.registry import bench_suites, plugin_names, plugins
from lorakit.serving.command import add_serve

from .adapter import add_adapter
from .demo import cmd_demo
from .options import Parser, check_options
from .plugin import cmd_plugin

COMMANDS = ("plugins", "demo", "bench", "adapter", "serve")


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


# --- lorakit bench -----------------------------------------------------------------------
def cmd_bench(args) -> int:
    from lorakit.reports.bench import run_suite

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


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `lorakit` parser. With `argv`, only the commands it names get their options
    (the rest keep their name and help); without, every command is complete."""
    needed = None if argv is None else set(argv)

    def wants(command: str) -> bool:
        return needed is None or command in needed

    names = ", ".join(plugin_names()) or "none installed"
    parser = Parser(
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
    p.add_argument("--jobs", type=int, default=1,
                   help="demos run at the same time, each its own process (default 1; with "
                        "more, each demo's output goes to demo.log in its folder)")
    p.set_defaults(func=cmd_demo)

    # the suites' names come from their entry points; no suite is imported to list them
    suites = ", ".join(sorted(bench_suites())) or "none registered" if wants("bench") else ""
    p = sub.add_parser("bench", help="run benchmark suites",
                       description=f"Run benchmark suites. Registered suites: {suites}.")
    p.add_argument("--suite", required=True, help=f"suite name, or 'all' (one of: {suites})")
    p.add_argument("--out", type=Path, default=Path("reports/bench"), help="output folder")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.set_defaults(func=cmd_bench)

    add_adapter(sub, needed)
    add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_third_party()
    try:
        if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
            return cmd_plugin(argv[0], argv[1:], COMMANDS)
        parser = build_parser(argv)
        check_options(parser, argv)
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return args.func(args)
    except LoraKitError as err:
        print(f"lorakit: error: {err}", file=sys.stderr)
        return 2
