"""The `lorakit` command.

    lorakit plugins                                  installed plugins, and how to add the rest
    lorakit <plugin> fit|validate|test|predict ...   that plugin's LightningCLI (--help: every option)
    lorakit <plugin> demo [--out DIR]                its embedded default, end to end
    lorakit demo --all [--out DIR]                   every installed plugin's demo + an index page
    lorakit bench --suite NAME|all --out DIR         benchmark suites: results.json, report.md/.html, PNGs
    lorakit adapter inspect|merge|analyze|export-peft ...   work on adapter files
    lorakit adapter merge-many A B C --method lego --out M.safetensors   several adapters -> one
    lorakit serve BASE ADAPTERS... [--port 8000]    many adapters, one base, OpenAI-compatible HTTP

Errors that lorakit raises on purpose (bad input, wrong base model, an unknown option)
are printed as one line, `lorakit: error: ...`, with exit status 2; anything else is a
bug and keeps its traceback.

Help answers without torch or Lightning: each command imports what it needs when it
runs (main.py: the command line; plugin.py: `lorakit <plugin> ...`; adapter.py: the
adapter-file commands; options.py: unknown options; lightning.py: the LightningCLI).
"""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
