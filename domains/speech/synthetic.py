"""A synthetic "adult vs child" speech corpus, spoken by espeak-ng.

Children's speech is hard for Whisper mostly because it sits higher: higher pitch and
higher formants (shorter vocal tracts), and a different speaking rate. Here a
"speaker" is one espeak-ng voice variant at one pitch and rate, its audio then
shifted up by resampling (played `shift`× faster, which raises pitch and formants
together, as a shorter vocal tract does). Adults: male variants at low pitch, no
shift. Children: female variants at high pitch, shifted 1.2–1.35×, faster.

Splits are speaker-disjoint:

    child_train  child_val  child_test   in-domain child speakers (disjoint draws)
    child_ood    child variants, pitch and shift never seen in training
    adult_test   adult speakers (does adaptation forget them?)

and, apart, `build_adult_set`: adult speakers at pitches below every adult_test
speaker's (disjoint by construction, whatever the corpus seed), on which the embedded
base learns the short encoder context (lorakit.domains.speech.adult_base).

Texts are 1–6 words from `words.txt` (a few hundred common words). Everything is
deterministic in the seed, written once as FLAC + JSONL manifests into
`<cache>/speech/<name>-<hash of the settings>/` and reused after that.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import subprocess
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

from lorakit.domains.downloads import cache_dir
from lorakit.errors import LoraKitError

from .audio import SAMPLE_RATE

GENERATOR_VERSION = 1
WORDS = Path(__file__).with_name("words.txt")


@dataclass(frozen=True)
class Speaker:
    id: str
    voice: str      # espeak-ng voice+variant
    pitch: int      # espeak-ng -p, 0..99
    rate: int       # espeak-ng -s, words per minute
    shift: float    # resampling factor applied after synthesis (>1 raises pitch and formants)


@dataclass(frozen=True)
class SpeakerPool:
    voices: tuple[str, ...]
    pitch: tuple[int, int]
    rate: tuple[int, int]
    shift: tuple[float, float]


CHILD = SpeakerPool(("en-us+f1", "en-us+f2", "en-us+f3", "en-us+f4"), (70, 85), (180, 220),
                    (1.20, 1.35))
CHILD_OOD = SpeakerPool(("en-gb+f5", "en-gb+Annie", "en-us+anika", "en-gb+steph"), (88, 99),
                        (140, 170), (1.40, 1.50))
ADULT = SpeakerPool(("en-us+m1", "en-us+m2", "en-gb+m3", "en-us+m4", "en-gb+m6"), (20, 45),
                    (150, 175), (1.0, 1.0))
# the base's adult voices: the same variants, pitch below ADULT's, a wider rate
ADULT_BASE = SpeakerPool(ADULT.voices, (0, 19), (140, 190), (1.0, 1.0))


@dataclass(frozen=True)
class CorpusConfig:
    """Sizes of the corpus; utterances per split, speakers per split.

    Args:
        train: utterances of child_train.
        val: utterances of child_val.
        test: utterances of each test split (child_test, child_ood, adult_test).
        train_speakers: child voices of child_train.
        test_speakers: voices of each other split (child_val, child_test, child_ood,
            adult_test), disjoint from the training voices.
        max_seconds: longest clip; longer sentences are drawn again.
        seed: seed of the voices and the sentences.
    """
    train: int = 400
    val: int = 48
    test: int = 64
    train_speakers: int = 12
    test_speakers: int = 4
    max_seconds: float = 3.0
    seed: int = 0


SPLITS = ("child_train", "child_val", "child_test", "child_ood", "adult_test")


@dataclass(frozen=True)
class AdultSetConfig:
    """The adult set the embedded base is taught the short context on."""
    clips: int = 400
    speakers: int = 12
    max_seconds: float = 3.0
    seed: int = 0


def vocabulary() -> list[str]:
    return [w for w in WORDS.read_text().split("\n") if w and not w.startswith("#")]


def draw_speakers(pool: SpeakerPool, n: int, prefix: str, rng: random.Random,
                  taken: set) -> list[Speaker]:
    """`n` speakers of a pool, none equal (voice, pitch, rate, shift) to one in `taken`."""
    speakers = []
    while len(speakers) < n:
        voice = pool.voices[len(speakers) % len(pool.voices)]
        params = (voice, rng.randint(*pool.pitch), rng.randint(*pool.rate),
                  round(rng.uniform(*pool.shift), 2))
        if params in taken:
            continue
        taken.add(params)
        speakers.append(Speaker(f"{prefix}{len(speakers):02d}", *params))
    return speakers


def speakers_by_split(config: CorpusConfig) -> dict[str, list[Speaker]]:
    rng = random.Random(config.seed)
    taken: set = set()
    child = draw_speakers(CHILD, config.train_speakers + 2 * config.test_speakers, "child",
                          rng, taken)
    n, k = config.train_speakers, config.test_speakers
    return {"child_train": child[:n], "child_val": child[n:n + k],
            "child_test": child[n + k:],
            "child_ood": draw_speakers(CHILD_OOD, k, "ood", rng, taken),
            "adult_test": draw_speakers(ADULT, k, "adult", rng, taken)}


def espeak_binary() -> str:
    found = shutil.which("espeak-ng")
    if found is None:
        raise LoraKitError("the synthetic speech corpus needs espeak-ng: install it "
                           "(apt-get install espeak-ng) or give your own manifests")
    return found


def speak(text: str, speaker: Speaker) -> np.ndarray:
    """16 kHz float32 audio of `speaker` saying `text`."""
    cmd = [espeak_binary(), "-v", speaker.voice, "-p", str(speaker.pitch), "-s",
           str(speaker.rate), "--stdout", text]
    wav = subprocess.run(cmd, capture_output=True, check=True).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    # resampling to 16 kHz / shift keeps the samples but plays them `shift`× faster
    ratio = (Fraction(SAMPLE_RATE, rate) / Fraction(speaker.shift).limit_denominator(100))
    ratio = ratio.limit_denominator(1000)
    audio = resample_poly(audio, ratio.numerator, ratio.denominator)
    peak = float(np.abs(audio).max()) or 1.0
    return (0.9 * audio / peak).astype(np.float32)


def settings_id(config) -> str:
    key = json.dumps({"config": asdict(config), "version": GENERATOR_VERSION,
                      "words": vocabulary()}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def build_corpus(config: CorpusConfig = CorpusConfig(), root: Path | None = None) -> Path:
    """The corpus folder (manifests `<split>.jsonl`, audio under `audio/`), built if absent."""
    sizes = {"child_train": config.train, "child_val": config.val}
    plan = {split: (speakers, sizes.get(split, config.test))
            for split, speakers in speakers_by_split(config).items()}
    return _build(f"synthetic-{settings_id(config)}", plan, config, root)


def build_adult_set(config: AdultSetConfig = AdultSetConfig(), root: Path | None = None) -> Path:
    """The folder of the base's adult set (manifest `adult_train.jsonl`), built if absent."""
    speakers = draw_speakers(ADULT_BASE, config.speakers, "adultbase",
                             random.Random(config.seed), set())
    return _build(f"adult-{settings_id(config)}", {"adult_train": (speakers, config.clips)},
                  config, root)


def build_adult_val(config: CorpusConfig = CorpusConfig(), root: Path | None = None) -> Path:
    """The folder of an adult validation set (manifest `adult_val.jsonl`, `config.val`
    clips) beside `config`'s corpus: adult voices of the adult_test pool, none of them a
    speaker of any corpus split, and sentences from their own random stream, so choosing
    settings on it reads neither a test speaker nor a training sentence."""
    taken = {(s.voice, s.pitch, s.rate, s.shift)
             for speakers in speakers_by_split(config).values() for s in speakers}
    speakers = draw_speakers(ADULT, config.test_speakers, "adultval",
                             random.Random(config.seed + 2), taken)
    return _build(f"adultval-{settings_id(config)}", {"adult_val": (speakers, config.val)},
                  config, root, text_seed=config.seed + 3)


def _build(name: str, plan: dict[str, tuple[list[Speaker], int]], config,
           root: Path | None, text_seed: int | None = None) -> Path:
    """Speak `plan` (split: its speakers, taken in turn, and its clip count) into
    `<root>/<name>/`, written whole or not at all; sentences are drawn from
    `text_seed` (default config.seed + 1)."""
    root = Path(root) if root else cache_dir() / "speech"
    folder = root / name
    if (folder / "corpus.json").is_file():
        return folder
    espeak_binary()
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    words = vocabulary()
    rng = random.Random(config.seed + 1 if text_seed is None else text_seed)
    summary = {"config": asdict(config), "splits": {}, "redrawn_too_long": 0}
    progress = tqdm(total=sum(n for _, n in plan.values()), desc="espeak-ng corpus",
                    unit="clip")
    for split, (speakers, n) in plan.items():
        (tmp / "audio" / split).mkdir(parents=True, exist_ok=True)
        records = []
        for i in range(n):
            speaker = speakers[i % len(speakers)]
            while True:
                text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
                audio = speak(text, speaker)
                if len(audio) <= config.max_seconds * SAMPLE_RATE:
                    break
                summary["redrawn_too_long"] += 1
            name = f"audio/{split}/{split}-{i:04d}.flac"
            sf.write(tmp / name, audio, SAMPLE_RATE)
            records.append({"audio": name, "text": text, "speaker": speaker.id})
            progress.update()
        with open(tmp / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        summary["splits"][split] = {"utterances": len(records),
                                    "speakers": [asdict(s) for s in speakers]}
    progress.close()
    (tmp / "corpus.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
