"""WordNet glosses labelled by their lexicographer file: a 45-class text task.

Every WordNet synset was filed by a lexicographer into one of 45 files by part of speech
and topic (noun.animal, verb.motion, adj.pert, …: the `lexnames` of WordNet 3.0), and
carries a gloss (a definition, often with quoted examples). Gloss → lexicographer class
is a many-class classification of short real English with 117,659 examples.

The data files come from Debian's `wordnet-base` 1:3.0-37 (`apt-get download`, sha256
pinned; read straight from the .deb, see archives.py). Licence: the WordNet 3.0 licence
(Princeton University; use, copy, modify and distribute for any purpose without fee,
keeping its copyright notice: "WordNet 3.0 Copyright 2006 by Princeton University. All
rights reserved."). Nothing is committed.

A data line is `offset lex_filenum ss_type w_cnt word lex_id … | gloss`; the
two-digit `lex_filenum` is the class, the text after `| ` the gloss (examples
included, as WordNet prints it). The split is 70 / 10 / 20, stratified by class, seeded.
"""
from __future__ import annotations

from pathlib import Path

from lorakit.domains.archives import deb_member
from lorakit.domains.downloads import Pinned, cache_root, fetch
from lorakit.domains.split import stratified_split
from lorakit.errors import DataError

DEB = Pinned(
    filename="wordnet-base_1%3a3.0-37_all.deb", apt="wordnet-base=1:3.0-37",
    sha256="61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
    what="the WordNet 3.0 glosses",
    # by hand: the Debian package itself, on any machine with apt-get
    by_hand="apt-get download wordnet-base=1:3.0-37 on a Debian machine")
PARTS = ("noun", "verb", "adj", "adv")
# WordNet 3.0 lexnames(5WN): the class of lex_filenum i is LEXNAMES[i]
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance",
    "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion",
    "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)

Example = tuple[str, int]


def parse_data_file(text: str, where: str) -> list[Example]:
    """(gloss, lex_filenum) of every synset line of a WordNet `data.<pos>` file."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("  "):   # the licence header lines start with 2 spaces
            continue
        head, sep, gloss = line.partition(" | ")
        fields = head.split(" ")
        if not sep or len(fields) < 4 or not fields[1].isdigit():
            raise DataError(f"{where}, line {number}: not a WordNet synset line "
                            f"(`offset lex_filenum ss_type … | gloss`): {line[:80]!r}")
        cls = int(fields[1])
        if cls >= len(LEXNAMES):
            raise DataError(f"{where}, line {number}: lex_filenum {cls} is not one of the "
                            f"{len(LEXNAMES)} WordNet 3.0 lexicographer files")
        out.append((gloss.strip(), cls))
    return out


def read_glosses(deb: Path) -> list[Example]:
    """Every (gloss, class) of the four data files in the wordnet-base package `deb`."""
    out = []
    for part in PARTS:
        name = f"./usr/share/wordnet/data.{part}"
        raw = deb_member(deb, name)
        out += parse_data_file(raw.decode("utf-8", errors="replace"), f"{deb}: {name}")
    return out


def wordnet(cache: Path | None = None, seed: int = 0, val: float = 0.1,
            test: float = 0.2) -> dict[str, list[Example]]:
    """{"train"|"val"|"test": [(gloss, class)]}, class names in LEXNAMES; fetched on first use."""
    examples = read_glosses(fetch(DEB, cache_root(cache) / "downloads"))
    split = stratified_split([y for _, y in examples], val=val, test=test, seed=seed)
    return {name: [examples[i] for i in idx] for name, idx in split.items()}
