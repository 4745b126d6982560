"""`lorakit <plugin> ...`: a plugin's LightningCLI commands, its demo, its own commands.

`lorakit <plugin> --help` reads the plugin's registration only; Lightning and the
plugin's modules are imported by the command that runs them.
"""
from __future__ import annotations

import json
from pathlib import Path

from lorakit.errors import LoraKitError
from lorakit.registry import Plugin, get_plugin, plugin_names, resolve

from .options import Parser, check_options, closest

# LightningCLI's commands, with what each does in a plugin
LIGHTNING_COMMANDS = {
    "fit": "train the adapter (the plugin's LightningModule through Trainer.fit) and save "
           "it",
    "validate": "run the validation loop on the plugin's validation data",
    "test": "run the test loop on the plugin's test data",
    "predict": "run the prediction loop",
}


def set_threads(threads: int | None) -> None:
    if threads:
        import torch
        torch.set_num_threads(threads)


def run_lightning_cli(plugin: Plugin, argv: list[str]):
    """`lorakit <plugin> fit ...`: LightningCLI with the plugin's default config."""
    from .lightning import LorakitCLI

    module_cls, data_cls = plugin.load("module"), plugin.load("datamodule")
    prog = f"lorakit {plugin.name}"
    defaults = {cmd: {"default_config_files": [plugin.default_config],
                      "description": f"{prog} {cmd}: {LIGHTNING_COMMANDS[cmd]}."}
                for cmd in LIGHTNING_COMMANDS}
    defaults.update(prog=prog, description=f"{prog}: {plugin.summary}")
    return LorakitCLI(module_cls, data_cls, args=argv, parser_kwargs=defaults,
                      save_config_kwargs={"overwrite": True})


def run_plugin_demo(plugin: Plugin, out: Path, threads: int) -> dict:
    set_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    return plugin.load("demo")(out, threads=threads) or {}


def plugin_parser(plugin: Plugin) -> Parser:
    """`lorakit <plugin>`'s own parser: every command with its one-line help, and the
    demo's options. The Lightning and plugin commands parse their own options."""
    prog = f"lorakit {plugin.name}"
    parser = Parser(prog=prog, description=f"{plugin.summary}. `{prog} COMMAND --help` for "
                                           "a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd, text in LIGHTNING_COMMANDS.items():
        sub.add_parser(cmd, help=text, add_help=False)
    demo = sub.add_parser("demo", help="run the embedded default end to end and write a "
                          "report", description=f"Run {plugin.name}'s embedded default end "
                          "to end.")
    demo.add_argument("--out", type=Path, default=Path("reports") / plugin.name,
                      help="report folder (default: reports/<plugin>)")
    demo.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    for cmd, target in plugin.commands.items():
        sub.add_parser(cmd, help=getattr(target, "help", "") or f"see `{prog} {cmd} --help`",
                       add_help=False)
    return parser


def cmd_plugin(name: str, argv: list[str], commands: tuple[str, ...] = ()) -> int:
    """`lorakit NAME ...`; `commands` are lorakit's own, offered when NAME is a typo."""
    try:
        plugin = get_plugin(name)
    except LoraKitError as err:
        guess = closest(name, [*commands, *plugin_names()])
        raise LoraKitError(f"{err}; did you mean {guess}?" if guess else str(err)) from None
    if argv and argv[0] in LIGHTNING_COMMANDS:
        threads = _pop_threads(argv)
        set_threads(threads)
        run_lightning_cli(plugin, argv)
        return 0
    if argv and argv[0] in plugin.commands:
        return resolve(plugin.commands[argv[0]])(argv[1:]) or 0
    parser = plugin_parser(plugin)
    if argv and argv[0] == "demo":
        check_options(parser, argv)
        a = parser.parse_args(argv)
        figures = run_plugin_demo(plugin, a.out, a.threads)
        print(json.dumps(figures, indent=2, default=str))
        html = a.out / "report.html"
        print(f"report: {html if html.is_file() else a.out / 'report.md'}")
        return 0
    if argv and argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv:
        commands = [*LIGHTNING_COMMANDS, "demo", *plugin.commands]
        guess = closest(argv[0], commands)
        hint = f"did you mean {guess}?" if guess else f"one of {', '.join(commands)}"
        raise LoraKitError(f"{name} has no command {argv[0]!r}; {hint}")
    parser.print_help()
    return 2


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
