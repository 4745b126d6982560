"""Real adult speech: Asterisk's English core prompts (Debian, CC-BY-SA-3.0).

Debian's `asterisk-core-sounds-en-wav` 1.6.1-1 holds ~570 prompts of the Asterisk phone
system recorded by one professional adult voice (Allison Smith) as 8 kHz telephone-band
WAV; the transcripts are in `core-sounds-en.txt.gz` of `asterisk-core-sounds-en`. Both
packages are fetched with `apt-get download` into the cache (sha256 pinned), never
committed. `asterisk_corpus()` turns them into a manifest of 16 kHz FLAC clips that the
speech plugins read like any other (`adult_real.jsonl`: audio, text, speaker).

What is kept: prompts with a transcript and a recording; bracketed non-speech entries
("[this is a simple beep tone]") are dropped, and the keypad symbols the voice reads out
are written as words ("*" → "star", "#" → "pound"). `corpus.json` counts what was kept
and dropped, and how many clips fit `max_seconds` (clips longer than the model's context
are the caller's choice: `limit_duration` / the data module's `too_long`).
"""
from __future__ import annotations

import gzip
import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

from lorakit.domains.archives import deb_data, deb_member
from lorakit.domains.downloads import Pinned, cache_root, fetch
from lorakit.errors import DataError

from .audio import SAMPLE_RATE, resample

VERSION = "1.6.1-1"
WAV_DEB = Pinned(
    filename=f"asterisk-core-sounds-en-wav_{VERSION}_all.deb",
    apt=f"asterisk-core-sounds-en-wav={VERSION}",
    sha256="2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d",
    what="the Asterisk English prompts (real adult speech)",
    by_hand=f"apt-get download asterisk-core-sounds-en-wav={VERSION} on a Debian machine")
TEXT_DEB = Pinned(
    filename=f"asterisk-core-sounds-en_{VERSION}_all.deb",
    apt=f"asterisk-core-sounds-en={VERSION}",
    sha256="973e797d28e37fa6ca3c0a9d6fa717e77cf1268ae916bf09fd3503113cdffa50",
    what="the transcripts of the Asterisk English prompts",
    by_hand=f"apt-get download asterisk-core-sounds-en={VERSION} on a Debian machine")
TRANSCRIPTS = "./usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
SOUNDS = "./usr/share/asterisk/sounds/en_US_f_Allison/"
SPEAKER = "asterisk-allison"
LICENSE = "CC-BY-SA-3.0 (Digium, Inc.; voice: Allison Smith)"
SPOKEN = {"*": " star ", "#": " pound "}


def parse_transcripts(text: str, where: str) -> dict[str, str]:
    """{prompt name: transcript} from `core-sounds-en.txt` ("name: text" lines, ';' comments)."""
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith(";"):
            continue
        name, sep, said = line.partition(":")
        if not sep or not name.strip() or " " in name.strip():
            raise DataError(f"{where}, line {number}: not a `name: transcript` line: {line[:80]!r}")
        out[name.strip()] = said.strip()
    return out


def spoken(transcript: str) -> str | None:
    """The words the voice says, or None for a non-speech entry ("[ascending tones]")."""
    if transcript.startswith("[") or not transcript:
        return None
    for symbol, word in SPOKEN.items():
        transcript = transcript.replace(symbol, word)
    return re.sub(r"\s+", " ", transcript).strip()


def to_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 at 16 kHz (the prompts are 8 kHz: upsampled ×2 by `audio.resample`)."""
    return resample(audio.mean(axis=1) if audio.ndim > 1 else audio, rate)


def asterisk_corpus(cache: Path | None = None, max_seconds: float = 3.0) -> Path:
    """The folder holding `adult_real.jsonl` and its 16 kHz clips, built on first use.
    `max_seconds` only sets the count of clips that fit, written to corpus.json."""
    root = cache_root(cache)
    folder = root / "speech" / f"asterisk-{VERSION}"
    if (folder / "corpus.json").is_file():
        _count_fitting(folder, max_seconds)
        return folder
    downloads = root / "downloads"
    wav_deb, text_deb = fetch(WAV_DEB, downloads), fetch(TEXT_DEB, downloads)
    try:
        transcripts = parse_transcripts(
            gzip.decompress(deb_member(text_deb, TRANSCRIPTS)).decode("utf-8"),
            f"{text_deb}: {TRANSCRIPTS}")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise DataError(f"{text_deb}: {TRANSCRIPTS} is not readable gzip text ({err}); delete "
                        "the file and run again") from None
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "audio").mkdir(parents=True)
    records, dropped = [], {"non_speech": 0, "no_recording": 0}
    recordings = _recordings(wav_deb)
    for name, transcript in sorted(transcripts.items()):
        text = spoken(transcript)
        if text is None:
            dropped["non_speech"] += 1
            continue
        if name not in recordings:
            dropped["no_recording"] += 1
            continue
        try:
            audio, rate = sf.read(io.BytesIO(recordings[name]), dtype="float32")
        except (sf.LibsndfileError, RuntimeError) as err:
            raise DataError(f"{wav_deb}: {SOUNDS}{name}.wav is not readable audio ({err}); "
                            "delete the file and run again") from None
        path = f"audio/{name.replace('/', '__')}.flac"
        sf.write(tmp / path, to_16k(audio, rate), SAMPLE_RATE)
        records.append({"audio": path, "text": text, "speaker": SPEAKER, "prompt": name})
    if not records:
        raise DataError(f"{wav_deb}: no prompt had both a transcript and a recording")
    with open(tmp / "adult_real.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    (tmp / "corpus.json").write_text(json.dumps(
        {"source": [WAV_DEB.apt, TEXT_DEB.apt], "license": LICENSE, "kept": len(records),
         "dropped": dropped}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    _count_fitting(folder, max_seconds)
    return folder


def _recordings(deb: Path) -> dict[str, bytes]:
    """{prompt name: WAV bytes} of every prompt in the wav package."""
    data = deb_data(deb)
    out = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                if member.isfile() and member.name.startswith(SOUNDS) \
                        and member.name.endswith(".wav"):
                    out[member.name[len(SOUNDS):-4]] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{deb}: its data.tar is not readable ({err}); delete the file and "
                        "run again") from None
    return out


def _count_fitting(folder: Path, max_seconds: float) -> None:
    """Record in corpus.json how many clips fit `max_seconds`."""
    summary = json.loads((folder / "corpus.json").read_text())
    fits = summary.setdefault("fit", {})
    key = f"{max_seconds:g}s"
    if key not in fits:
        fits[key] = sum(
            sf.info(folder / json.loads(line)["audio"]).duration <= max_seconds
            for line in (folder / "adult_real.jsonl").read_text().splitlines())
        (folder / "corpus.json").write_text(json.dumps(summary, indent=2))
