"""Unknown options: one line naming the closest valid option, exit status 2.

argparse would take `--trainer.max_step` as an abbreviation of `--trainer.max_steps`
and answer a typo with its whole usage text; lorakit's parsers refuse abbreviations
and say in one line what was meant.
"""
from __future__ import annotations

import argparse
import difflib
import sys

from ..errors import LoraKitError


def closest(given: str, valid: list[str]) -> str | None:
    """The valid option nearest to `given` in spelling, if one is near enough."""
    near = difflib.get_close_matches(given, valid, n=1, cutoff=0.6)
    return near[0] if near else None


def unknown_option(given: str, valid: list[str], help_command: str) -> str:
    """The one-line message for an option no parser knows."""
    guess = closest(given, valid)
    if guess:
        return f"unknown option {given}; did you mean {guess}?"
    return f"unknown option {given}; `{help_command} --help` lists every option"


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [s for action in parser._actions for s in action.option_strings]


class Parser(argparse.ArgumentParser):
    """argparse without prefix abbreviations (`--suit` is not `--suite`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Raise LoraKitError (one line) for the first `--option` in argv that the command
    it follows does not take; sub-commands are followed down from `parser`."""
    for token in argv:
        if token == "--":
            return
        sub = _subcommands(parser)
        if token in sub:
            parser = sub[token]
            continue
        if token.startswith("--"):
            given = token.split("=", 1)[0]
            valid = option_strings(parser)
            if given not in valid:
                raise LoraKitError(unknown_option(given, valid, parser.prog))


def fail(message: str) -> None:
    """Print `lorakit: error: message` and exit with status 2."""
    print(f"lorakit: error: {message}", file=sys.stderr)
    raise SystemExit(2)
