import pytest

from lorakit import DataError
from lorakit.domains.text import wordnet as wn

from .standins import deb_bytes

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"


def data_file(lines: list[tuple[int, str]]) -> bytes:
    body = "".join(f"{1740 + i:08d} {cls:02d} n 01 word{i} 0 000 | {gloss}  \n"
                   for i, (cls, gloss) in enumerate(lines))
    return (HEADER + body).encode()


def wordnet_deb(per_part: int = 10) -> bytes:
    """data.noun/verb/adj/adv with `per_part` glosses each, classes cycling per part."""
    first = {"noun": 3, "verb": 29, "adj": 0, "adv": 2}
    files = {}
    for part in wn.PARTS:
        lines = [(first[part] + i % 2, f"a {part} gloss {i}; \"an example\"")
                 for i in range(per_part)]
        files[f"./usr/share/wordnet/data.{part}"] = data_file(lines)
    return deb_bytes(files)


def test_lexnames_are_the_45_wordnet_files_in_lex_filenum_order():
    assert len(wn.LEXNAMES) == 45 and len(set(wn.LEXNAMES)) == 45
    assert (wn.LEXNAMES[0], wn.LEXNAMES[3], wn.LEXNAMES[29], wn.LEXNAMES[44]) == \
        ("adj.all", "noun.Tops", "verb.body", "adj.ppl")


def test_parse_data_file_takes_lex_filenum_as_class_and_the_gloss_as_text():
    text = (HEADER + "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is "
            "perceived; \"an entity\"  \n00002098 29 v 01 breathe 0 000 | draw air  \n")
    assert wn.parse_data_file(text, "data.noun") == [
        ('that which is perceived; "an entity"', 3), ("draw air", 29)]


@pytest.mark.parametrize("line, problem", [
    ("00001740 03 n 01 entity 0 000 no gloss bar", "not a WordNet synset line"),
    ("00001740 xx n 01 entity 0 000 | gloss", "not a WordNet synset line"),
    ("00001740 45 n 01 entity 0 000 | gloss", "lex_filenum 45 is not one of the 45"),
])
def test_parse_data_file_names_file_and_line_of_a_bad_record(line, problem):
    with pytest.raises(DataError, match=f"data.adv, line 2: {problem}"):
        wn.parse_data_file(HEADER + line + "\n", "data.adv")


def test_wordnet_reads_four_parts_from_the_deb_and_splits_by_class(pinned, cache):
    pinned(wn, "DEB", wordnet_deb(per_part=20))
    split = wn.wordnet(cache)
    every = [x for v in split.values() for x in v]
    assert len(every) == 80
    assert sorted({y for _, y in every}) == [0, 1, 2, 3, 4, 29, 30]
    assert {k: len(v) for k, v in split.items()} == {"train": 56, "val": 8, "test": 16}
    assert all(y in (3, 4) for g, y in every if g.startswith("a noun"))
    assert split == wn.wordnet(cache)


def test_wordnet_names_the_deb_that_is_not_a_debian_package(pinned, cache):
    deb = pinned(wn, "DEB", b"PK\x03\x04 a zip, not a deb")
    with pytest.raises(DataError, match=f"{deb}: is not a Debian package"):
        wn.wordnet(cache)


def test_wordnet_names_a_missing_data_file(pinned, cache):
    pinned(wn, "DEB", deb_bytes({"./usr/share/wordnet/data.noun": data_file([(3, "x")])}))
    with pytest.raises(DataError, match=r"\(data.tar\): has no member "
                       r"\./usr/share/wordnet/data.verb"):
        wn.wordnet(cache)


def test_wordnet_refuses_a_truncated_download(pinned, cache):
    whole = wordnet_deb()
    deb = pinned(wn, "DEB", whole)
    deb.write_bytes(whole[: len(whole) // 2])   # the pin is of the whole file
    with pytest.raises(DataError, match="has sha256 .* damaged or not the pinned release"):
        wn.wordnet(cache)
