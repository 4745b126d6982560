"""LightningCLI as `lorakit <plugin> fit|validate|test|predict` runs it.

Two differences from Lightning's:

- the default progress bar is lorakit's StepProgressBar (steps out of max_steps when
  the step budget ends the run). A progress bar the user names in --trainer.callbacks,
  or --trainer.enable_progress_bar false, wins as it would in plain Lightning;
- options are never abbreviated (`--trainer.max_step` is not `--trainer.max_steps`),
  and a bad command line gets one line, `lorakit: error: ...` (an unknown option names
  the closest valid one), exit status 2, instead of the whole usage text.
"""
from __future__ import annotations

import sys

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lorakit.reports.progress import StepProgressBar

from .options import option_strings, unknown_option


class LorakitArgumentParser(LightningArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        command = parser.prog.replace(" [options]", "")
        if message.startswith("unrecognized arguments: "):
            given = message.removeprefix("unrecognized arguments: ").split()[0]
            if given.startswith("-"):
                line = unknown_option(given.split("=", 1)[0], option_strings(parser), command)
            else:
                line = f"unexpected argument {given!r}; `{command} --help` lists every option"
        else:
            line = f"{message.strip()} (`{command} --help` lists every option)"
        print(f"lorakit: error: {line}", file=sys.stderr)
        self.exit(2)


class LorakitCLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("parser_class", LorakitArgumentParser)
        super().__init__(*args, **kwargs)

    def setup_parser(self, add_subcommands, main_kwargs, subparser_kwargs) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        # jsonargparse names a subcommand "lorakit <plugin> [options] fit"; lorakit takes
        # no options between the plugin and its command, so the usage line says what to type
        for name, parser in getattr(self, "_subcommand_parsers", {}).items():
            parser.prog = f"{self.parser.prog} {name}"

    def instantiate_trainer(self, **kwargs) -> Trainer:
        config = self.config_init.get(str(self.subcommand), self.config_init).get("trainer", {})
        callbacks = kwargs.get("callbacks", config.get("callbacks")) or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        wants_bar = kwargs.get("enable_progress_bar", config.get("enable_progress_bar")) is not False
        if wants_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, StepProgressBar()]
        return super().instantiate_trainer(**kwargs)
