"""Audio files to 16 kHz mono float32, the only input Whisper takes.

soundfile reads WAV, FLAC and OGG without ffmpeg; other rates are resampled with a
polyphase filter (scipy's `resample_poly`, which low-passes before decimating, so
44.1 kHz recordings do not alias into the speech band).
"""
from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from lorakit.errors import DataError

SAMPLE_RATE = 16000


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    if rate == target:
        return audio.astype(np.float32, copy=False)
    g = gcd(rate, target)
    return resample_poly(audio, target // g, rate // g).astype(np.float32)


def audio_info(path: Path, where: str) -> float:
    """Duration in seconds of an audio file, or a DataError naming `where` (file:line)."""
    if not path.is_file():
        raise DataError(f"{where}: audio file {path} does not exist")
    try:
        info = sf.info(str(path))
    except Exception as err:
        raise DataError(f"{where}: {path} is not readable audio ({err}); expected WAV, FLAC "
                        "or OGG that soundfile reads") from None
    if info.frames == 0:
        raise DataError(f"{where}: {path} is empty audio (0 samples)")
    return info.frames / info.samplerate


def read_audio(path, where: str = "") -> np.ndarray:
    """Samples of `path` as 16 kHz mono float32 in [-1, 1]."""
    path = Path(path)
    where = where or str(path)
    audio_info(path, where)
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        raise DataError(f"{where}: {path} is not readable audio ({err})") from None
    return resample(audio.mean(axis=1), rate)
