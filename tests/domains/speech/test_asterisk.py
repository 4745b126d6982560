"""The Asterisk prompts (real adult speech): transcript parsing, clip conversion, and the
real packages (slow: an 18 MB apt download)."""
import json

import numpy as np
import pytest
import soundfile as sf

from lorakit.domains.speech.asterisk import parse_transcripts, spoken, to_16k
from lorakit.errors import DataError, LoraKitError


def test_transcripts_are_name_colon_text_lines_with_comments():
    text = "; Core Sounds\n\nactivated: Activated.\ndictate/pause: pause\nbeep: [a beep]\n"
    assert parse_transcripts(text, "t.txt") == {"activated": "Activated.",
                                                "dictate/pause": "pause", "beep": "[a beep]"}


def test_a_line_without_a_name_is_refused_with_its_number():
    with pytest.raises(DataError, match=r"t.txt, line 2: not a `name: transcript` line"):
        parse_transcripts("ok: fine\nno colon on this line\n", "t.txt")


def test_non_speech_is_dropped_and_keypad_symbols_are_read_out():
    assert spoken("[ascending tones]") is None
    assert spoken("press * to toggle, then #") == "press star to toggle, then pound"


def test_8_khz_telephone_audio_becomes_16_khz_float32():
    t = np.arange(8000) / 8000
    out = to_16k(np.stack([np.sin(2 * np.pi * 440 * t)] * 2, axis=1), 8000)
    assert out.dtype == np.float32 and out.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) - 440) <= 1           # the tone keeps its pitch


@pytest.mark.slow
def test_real_asterisk_prompts_give_563_clips_435_within_3_seconds():
    from lorakit.domains.speech.asterisk import asterisk_corpus
    try:
        folder = asterisk_corpus(max_seconds=3.0)
    except LoraKitError as err:
        if "could not download" in str(err) or "no apt-get" in str(err):
            pytest.skip(f"Debian archive not reachable: {err}")
        raise
    summary = json.loads((folder / "corpus.json").read_text())
    assert summary["kept"] == 563 and summary["fit"]["3s"] == 435
    first = json.loads((folder / "adult_real.jsonl").read_text().splitlines()[0])
    assert first["text"] == "Activated." and sf.info(folder / first["audio"]).samplerate == 16000
