"""Model folders built once in the cache and loaded by transformers.

A conversion that dies halfway must not leave a folder that looks finished: the folder
is built beside its final place (`<name>.part`), a `lorakit-source.json` saying where it
came from is written last, and only then is it renamed into place. Its presence is what
"already built" means.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from lorakit.errors import CheckpointError

DONE = "lorakit-source.json"


def built_folder(out: Path, build: Callable[[Path], dict]) -> Path:
    """`out`, made by `build(folder)` (which returns its source record) unless already built."""
    if (out / DONE).is_file():
        return out
    part = out.with_name(out.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    try:
        record = build(part)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    (part / DONE).write_text(json.dumps(record, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    part.rename(out)
    return out


def load_folder(path: Path, auto_class, kind: str):
    """(model in eval mode, tokenizer) from a transformers folder, or a CheckpointError."""
    from transformers import AutoTokenizer

    try:
        return auto_class.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    except Exception as err:  # safetensors, json and transformers each raise their own
        raise CheckpointError(f"{path} does not load as a transformers {kind} ({err}); delete "
                              "the folder and run again to build it anew") from None
