"""Manifests and audio: what a speech team's files look like, and each bad input's message."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from lorakit.domains.speech.audio import read_audio
from lorakit.domains.speech.manifest import limit_duration, read_manifest
from lorakit.errors import DataError


def tone(path, seconds=1.0, rate=16000, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    audio = 0.3 * np.sin(2 * np.pi * 220 * t)
    sf.write(path, np.stack([audio] * channels, axis=1) if channels > 1 else audio, rate)
    return path


def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_jsonl_manifest_resolves_paths_and_reads_speaker(tmp_path):
    tone(tmp_path / "a.wav", 1.0)
    tone(tmp_path / "b.flac", 2.0)
    m = jsonl(tmp_path / "m.jsonl", [{"audio": "a.wav", "text": " hello ", "speaker": "s1"},
                                     {"audio_filepath": str(tmp_path / "b.flac"),
                                      "transcript": "bye"}])
    a, b = read_manifest(m)
    assert (a.audio, a.text, a.speaker) == (tmp_path / "a.wav", "hello", "s1")
    assert (b.text, b.speaker) == ("bye", None)
    assert a.seconds == pytest.approx(1.0) and b.seconds == pytest.approx(2.0)


def test_csv_manifest(tmp_path):
    tone(tmp_path / "a.wav")
    (tmp_path / "m.csv").write_text("path,sentence,speaker_id\na.wav,good morning,k7\n")
    (u,) = read_manifest(tmp_path / "m.csv")
    assert (u.text, u.speaker, u.where) == ("good morning", "k7", f"{tmp_path / 'm.csv'}:2")


def test_missing_audio_names_manifest_line(tmp_path):
    tone(tmp_path / "a.wav")
    m = jsonl(tmp_path / "m.jsonl", [{"audio": "a.wav", "text": "x"},
                                     {"audio": "gone.wav", "text": "y"}])
    with pytest.raises(DataError, match=r"m\.jsonl:2: audio file .*gone\.wav does not exist"):
        read_manifest(m)


def test_unreadable_audio_names_manifest_line(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEnot really audio")
    m = jsonl(tmp_path / "m.jsonl", [{"audio": "bad.wav", "text": "x"}])
    with pytest.raises(DataError, match=r"m\.jsonl:1: .*bad\.wav is not readable audio"):
        read_manifest(m)


def test_empty_audio_names_manifest_line(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0), 16000)
    m = jsonl(tmp_path / "m.jsonl", [{"audio": "empty.wav", "text": "x"}])
    with pytest.raises(DataError, match=r"m\.jsonl:1: .*empty\.wav is empty audio \(0 samples\)"):
        read_manifest(m)


def test_wrong_columns_say_what_is_expected(tmp_path):
    m = jsonl(tmp_path / "m.jsonl", [{"file": "a.wav", "words": "x"}])
    with pytest.raises(DataError, match=r"m\.jsonl:1: no 'audio' column; expected one of "
                                        r"\['audio', 'audio_filepath', 'path'\]"):
        read_manifest(m)
    (tmp_path / "m.csv").write_text("audio,label\na.wav,1\n")
    with pytest.raises(DataError, match=r"m\.csv:2: no 'text' column"):
        read_manifest(tmp_path / "m.csv")


def test_empty_transcript_names_file_and_line(tmp_path):
    tone(tmp_path / "a.wav")
    m = jsonl(tmp_path / "m.jsonl", [{"audio": "a.wav", "text": "ok"},
                                     {"audio": "a.wav", "text": "   "}])
    with pytest.raises(DataError, match=r"m\.jsonl:2: empty transcript for a\.wav"):
        read_manifest(m)
    assert read_manifest(m, require_text=False)[1].text == ""


def test_not_json_names_line(tmp_path):
    tone(tmp_path / "a.wav")
    (tmp_path / "m.jsonl").write_text('{"audio": "a.wav", "text": "x"}\n{oops\n')
    with pytest.raises(DataError, match=r"m\.jsonl:2: not a JSON object"):
        read_manifest(tmp_path / "m.jsonl")


def test_too_long_clips_are_counted_and_handled_as_asked(tmp_path):
    for name, seconds in (("a", 1.0), ("b", 4.0), ("c", 5.0)):
        tone(tmp_path / f"{name}.wav", seconds)
    m = jsonl(tmp_path / "m.jsonl", [{"audio": f"{n}.wav", "text": n} for n in "abc"])
    utts = read_manifest(m)
    with pytest.raises(DataError, match=r"2 of 3 clips in m are longer than the 3 s encoder "
                                        r"context \(first: .*m\.jsonl:2, 4\.00 s\)"):
        limit_duration(utts, 3.0, "error", "m")
    kept, n = limit_duration(utts, 3.0, "skip", "m")
    assert n == 2 and [u.text for u in kept] == ["a"]
    kept, n = limit_duration(utts, 3.0, "truncate", "m")
    assert n == 2 and len(kept) == 3


def test_audio_is_resampled_to_16k_mono(tmp_path):
    audio = read_audio(tone(tmp_path / "s.wav", 1.5, rate=44100, channels=2))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == 24000
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * 16000 / len(audio) == pytest.approx(220, abs=1)
