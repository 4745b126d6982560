"""The espeak-ng adult/child corpus: speaker-disjoint splits, cached, within the context."""
from __future__ import annotations

import json
import random

import soundfile as sf

from lorakit.domains.speech.manifest import read_manifest
from lorakit.domains.speech.synthetic import (
    ADULT_BASE,
    CHILD,
    CHILD_OOD,
    SPLITS,
    AdultSetConfig,
    CorpusConfig,
    build_adult_set,
    build_adult_val,
    build_corpus,
    draw_speakers,
    speakers_by_split,
    vocabulary,
)

SMALL = CorpusConfig(train=6, val=2, test=3, train_speakers=3, test_speakers=2, seed=3)


def test_vocabulary_has_a_few_hundred_distinct_words():
    words = vocabulary()
    assert 250 <= len(set(words)) == len(words) <= 500


def test_splits_are_speaker_disjoint_and_ood_is_outside_training_voices_and_pitch():
    speakers = speakers_by_split(CorpusConfig())
    params = {s: {(x.voice, x.pitch, x.rate, x.shift) for x in v} for s, v in speakers.items()}
    ids = {s: {x.id for x in v} for s, v in speakers.items()}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not params[a] & params[b] and not ids[a] & ids[b], (a, b)
    train = speakers["child_train"]
    assert not {x.voice for x in speakers["child_ood"]} & {x.voice for x in train}
    assert min(x.pitch for x in speakers["child_ood"]) > max(x.pitch for x in train)
    assert min(x.shift for x in speakers["child_ood"]) > max(x.shift for x in train)
    assert all(x.pitch <= 45 and x.shift == 1.0 for x in speakers["adult_test"])
    assert CHILD.pitch[1] < CHILD_OOD.pitch[0]


def test_corpus_is_built_once_and_read_back_as_manifests(tmp_path):
    folder = build_corpus(SMALL, tmp_path)
    stamp = (folder / "corpus.json").stat().st_mtime_ns
    assert build_corpus(SMALL, tmp_path) == folder
    assert (folder / "corpus.json").stat().st_mtime_ns == stamp   # cached, not rebuilt
    sizes = {"child_train": 6, "child_val": 2}
    for split in SPLITS:
        utts = read_manifest(folder / f"{split}.jsonl")
        assert len(utts) == sizes.get(split, 3)
        for u in utts:
            assert 1 <= len(u.text.split()) <= 6
            assert 0.2 < u.seconds <= SMALL.max_seconds
            assert sf.info(str(u.audio)).samplerate == 16000
    summary = json.loads((folder / "corpus.json").read_text())
    assert set(summary["splits"]) == set(SPLITS)


def test_the_bases_adult_set_shares_no_speaker_with_any_adult_test_set(tmp_path):
    base = draw_speakers(ADULT_BASE, 12, "adultbase", random.Random(0), set())
    for seed in range(5):
        adult_test = speakers_by_split(CorpusConfig(seed=seed))["adult_test"]
        assert max(x.pitch for x in base) < min(x.pitch for x in adult_test)
    folder = build_adult_set(AdultSetConfig(clips=4, speakers=2), tmp_path)
    utts = read_manifest(folder / "adult_train.jsonl")
    assert len(utts) == 4 and {u.speaker for u in utts} == {"adultbase00", "adultbase01"}
    assert all(u.seconds <= 3.0 for u in utts)


def test_adult_val_is_speaker_disjoint_and_shares_no_sentence_with_training(tmp_path):
    config = CorpusConfig(train=12, val=6, test=4, train_speakers=3, test_speakers=2)
    corpus = read_manifest(build_corpus(config, tmp_path) / "child_train.jsonl")
    val = read_manifest(build_adult_val(config, tmp_path) / "adult_val.jsonl")
    everyone = {s.id: s for split in speakers_by_split(config).values() for s in split}
    summary = json.loads((build_adult_val(config, tmp_path) / "corpus.json").read_text())
    val_speakers = summary["splits"]["adult_val"]["speakers"]
    assert len(val) == 6 and len(val_speakers) == 2
    assert not {(v["voice"], v["pitch"], v["rate"], v["shift"]) for v in val_speakers} & {
        (s.voice, s.pitch, s.rate, s.shift) for s in everyone.values()}
    assert not {u.text for u in val} & {u.text for u in corpus}
