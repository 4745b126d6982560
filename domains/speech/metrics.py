"""WER and CER as Whisper's paper reports them: after Whisper's English text normaliser.

The normaliser (whisper.normalizers.EnglishTextNormalizer) lower-cases, drops
punctuation and fillers, spells numbers as digits and unifies British/American
spelling, so "Five red balls." and "5 red balls" count as the same words.
"""
from __future__ import annotations

import jiwer
from whisper.normalizers import EnglishTextNormalizer

_normalize = EnglishTextNormalizer()


def normalize(text: str) -> str:
    return " ".join(_normalize(text).split())


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """{'wer', 'cer', 'n'} over the pairs whose normalised reference is not empty."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    pairs = [(normalize(r), normalize(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return {"wer": float("nan"), "cer": float("nan"), "n": 0}
    refs, hyps = zip(*pairs)
    return {"wer": float(jiwer.wer(list(refs), list(hyps))),
            "cer": float(jiwer.cer(list(refs), list(hyps))), "n": len(refs)}
