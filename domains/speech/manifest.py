"""Speech manifests: which audio file says what, by whom.

Two layouts, the ones speech toolkits already write:

    JSONL   {"audio": "clips/a.wav", "text": "hello there", "speaker": "s01"}   one a line
    CSV     audio,text,speaker                                                 with a header

`audio` may also be called `audio_filepath` or `path` (NeMo, Hugging Face datasets),
`text` may be `transcript` or `sentence`; `speaker` (or `speaker_id`) is optional.
Relative audio paths are relative to the manifest's folder. Every record is checked
when the manifest is read (audio exists, is readable, is not empty; transcript not
empty), so a bad record stops the run at once with its file and line, not halfway
through an epoch.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lorakit.errors import DataError

from .audio import audio_info

COLUMNS = {"audio": ("audio", "audio_filepath", "path"),
           "text": ("text", "transcript", "sentence"),
           "speaker": ("speaker", "speaker_id")}
TooLong = Literal["error", "skip", "truncate"]


@dataclass(frozen=True)
class Utterance:
    audio: Path
    text: str
    speaker: str | None
    where: str          # "manifest:line", for messages
    seconds: float


def _pick(record: dict, field: str, where: str, required: bool) -> str | None:
    for name in COLUMNS[field]:
        if name in record:
            return record[name]
    if required:
        raise DataError(f"{where}: no {field!r} column; expected one of {list(COLUMNS[field])} "
                        f"(found {sorted(record)}). A manifest needs audio and text columns, "
                        "speaker is optional.")
    return None


def _records(path: Path):
    """(line number, dict) of a JSONL or CSV manifest."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise DataError(f"{path}: empty CSV manifest; expected a header "
                                "audio,text[,speaker]")
            for row in reader:
                yield reader.line_num, row
        return
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not a JSON object ({err.msg}); a JSONL "
                                "manifest has one {\"audio\": ..., \"text\": ...} a line") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: a JSON {type(record).__name__}, expected an "
                                "object with audio and text")
            yield number, record


def read_manifest(path, require_text: bool = True) -> list[Utterance]:
    """Every record of a manifest, checked, or a DataError naming the file and line.

    `require_text=False` reads clips to transcribe, whose text column may be absent.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise DataError(f"manifest {path}: expected a .jsonl or .csv file")
    utterances = []
    for number, record in _records(path):
        where = f"{path}:{number}"
        audio = _pick(record, "audio", where, required=True)
        text = _pick(record, "text", where, required=require_text) or ""
        speaker = _pick(record, "speaker", where, required=False)
        if not isinstance(audio, str) or not audio.strip():
            raise DataError(f"{where}: empty audio path")
        if not isinstance(text, str) or (require_text and not text.strip()):
            raise DataError(f"{where}: empty transcript for {audio}; every clip needs its text")
        audio_path = Path(audio) if Path(audio).is_absolute() else path.parent / audio
        seconds = audio_info(audio_path, where)
        utterances.append(Utterance(audio_path, text.strip(), speaker or None, where, seconds))
    if not utterances:
        raise DataError(f"manifest {path} has no records")
    return utterances


def limit_duration(utterances: list[Utterance], max_seconds: float, policy: TooLong,
                   source: str) -> tuple[list[Utterance], int]:
    """Apply the too-long policy; returns the utterances kept and how many were too long.

    'error' refuses them (naming the first), 'skip' drops them, 'truncate' keeps them
    (the loader cuts the audio to the context). Never silent: the count is returned
    for the caller to report.
    """
    if policy not in ("error", "skip", "truncate"):
        raise DataError(f"too_long must be 'error', 'skip' or 'truncate', got {policy!r}")
    long = [u for u in utterances if u.seconds > max_seconds]
    if long and policy == "error":
        raise DataError(
            f"{len(long)} of {len(utterances)} clips in {source} are longer than the "
            f"{max_seconds:g} s encoder context (first: {long[0].where}, {long[0].seconds:.2f} s). "
            "Choose --data.too_long skip or truncate, or a longer --model.n_audio_ctx.")
    if policy == "skip":
        utterances = [u for u in utterances if u.seconds <= max_seconds]
    return utterances, len(long)
