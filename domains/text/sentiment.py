"""Human-rated sentiment of sentences from four domains (Hutto & Gilbert, ICWSM 2014).

VADER's authors had every sentence rated by 20 or more screened people on a scale from
−4 (extremely negative) to +4 (extremely positive) and published the mean rating of
each. The files ship in the sdist of `vaderSentiment==3.3.2` on PyPI
(`additional_resources/hutto_ICWSM_2014.tar.gz`; MIT licence, © C.J. Hutto; the
sentences themselves come from Rotten Tomatoes snippets (Pang & Lee 2004), tweets,
Amazon reviews (Hu & Liu 2004) and New York Times editorials). lorakit fetches the
sdist once into the cache (sha256 pinned) and reads it from there; nothing is committed.

    domain   file                                  sentences
    movies   movieReviewSnippets_GroundTruth.txt     10,605
    tweets   tweets_GroundTruth.txt                   4,200
    amazon   amazonReviewSnippets_GroundTruth.txt     3,708
    nyt      nytEditorialSnippets_GroundTruth.txt     5,190

The labelling rule: a sentence whose mean rating is ≥ +0.5 is positive (1), ≤ −0.5
negative (0); the near-neutral middle (|mean| < 0.5, less than half a scale step from
"neutral") is dropped: these sentences have no polarity a reader would agree on. HTML entities
(`&amp;` in tweets) are unescaped, and a sentence whose text repeats an earlier one of
the same domain is dropped so that no text sits in two splits. Each domain is split
70 / 10 / 20 (train / val / test), stratified by label, with a fixed seed
(`lorakit.domains.split.stratified_split`).
"""
from __future__ import annotations

import html
from pathlib import Path

from lorakit.domains.archives import tar_member
from lorakit.domains.downloads import Pinned, cache_root, fetch
from lorakit.domains.split import stratified_split
from lorakit.errors import DataError

SDIST = Pinned(
    filename="vaderSentiment-3.3.2.tar.gz", pip="vaderSentiment==3.3.2", sdist=True,
    sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    what="the VADER human-rated sentences",
    # by hand: the pinned sdist through pip, on any machine that reaches the registry
    by_hand="pip download --no-deps --no-binary :all: vaderSentiment==3.3.2")
INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
DOMAINS = {"movies": "movieReviewSnippets", "tweets": "tweets",
           "amazon": "amazonReviewSnippets", "nyt": "nytEditorialSnippets"}
THRESHOLD = 0.5

Example = tuple[str, int]


def parse_ratings(text: str, where: str) -> list[tuple[str, float]]:
    """(sentence, mean rating) from a GroundTruth file: `id<TAB>mean<TAB>sentence` lines."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            if len(fields) != 3:
                raise ValueError
            mean = float(fields[1])
        except ValueError:
            raise DataError(f"{where}, line {number}: expected `id<TAB>mean rating<TAB>text`, "
                            f"got {line[:80]!r}") from None
        rows.append((html.unescape(fields[2].strip()), mean))
    return rows


def label(mean: float, threshold: float = THRESHOLD) -> int | None:
    """1 for positive, 0 for negative, None for the near-neutral middle that is dropped."""
    if mean >= threshold:
        return 1
    if mean <= -threshold:
        return 0
    return None


def read_hutto(archive: Path) -> dict[str, list[tuple[str, float]]]:
    """Per domain, every (sentence, mean rating) of the vaderSentiment sdist `archive`."""
    inner = tar_member(archive, INNER)
    out = {}
    for domain, stem in DOMAINS.items():
        name = f"hutto_ICWSM_2014/{stem}_GroundTruth.txt"
        where = f"{archive}: {INNER}: {name}"
        raw = tar_member(inner, name, where=f"{archive}: {INNER}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{where} is not UTF-8 text ({err})") from None
        out[domain] = parse_ratings(text, where)
    return out


def labelled(rows: list[tuple[str, float]], threshold: float = THRESHOLD) -> list[Example]:
    """(text, label) by the rule above, the neutral middle and repeated texts dropped."""
    seen: set[str] = set()
    out = []
    for text, mean in rows:
        y = label(mean, threshold)
        if y is None or text in seen:
            continue
        seen.add(text)
        out.append((text, y))
    return out


def sentiment(cache: Path | None = None, threshold: float = THRESHOLD, seed: int = 0,
              val: float = 0.1, test: float = 0.2) -> dict[str, dict[str, list[Example]]]:
    """{domain: {"train"|"val"|"test": [(text, label)]}}, fetching the sdist on first use."""
    archive = fetch(SDIST, cache_root(cache) / "downloads")
    out = {}
    for domain, rows in read_hutto(archive).items():
        examples = labelled(rows, threshold)
        split = stratified_split([y for _, y in examples], val=val, test=test, seed=seed)
        out[domain] = {name: [examples[i] for i in idx] for name, idx in split.items()}
    return out
