"""The synthetic generator, and CPAT's human set: fetched, cached, split stratified."""
import pytest

from lorakit.domains.genomics.features import longest_orf
from lorakit.domains.genomics.split import stratified_split
from lorakit.domains.genomics.synthetic import synthetic_transcripts, write_synthetic
from lorakit.errors import DataError

STOPS = {"TAA", "TAG", "TGA"}


def test_synthetic_is_deterministic_per_seed():
    a, _ = synthetic_transcripts(10, 10, seed=7)
    b, _ = synthetic_transcripts(10, 10, seed=7)
    c, _ = synthetic_transcripts(10, 10, seed=8)
    assert [r.seq for r in a] == [r.seq for r in b] != [r.seq for r in c]


def test_mrnas_carry_a_cds_and_lncrnas_no_long_orf():
    records, labels = synthetic_transcripts(40, 40, seed=0, hard_fraction=0.3)
    for r, y in zip(records, labels):
        assert set(r.seq) <= set("ACGT")
        if y == 1:
            start, end = (int(x) for x in r.description.split()[0][4:].split("-"))
            cds = r.seq[start - 1:end]
            assert cds[:3] == "ATG" and cds[-3:] in STOPS and len(cds) % 3 == 0
            assert not STOPS & {cds[i:i + 3] for i in range(0, len(cds) - 3, 3)}
            assert len(cds) >= 90
        else:
            orf = longest_orf(r.seq)
            # an upstream in-frame ATG can extend an ORF by up to the 40 codons UTRs allow
            limit = 141 if "hard=1" in r.description else 41
            assert orf is None or orf.length <= 3 * limit


def test_hard_cases_exist_in_both_classes():
    records, labels = synthetic_transcripts(50, 50, seed=1, hard_fraction=0.4)
    short_cds = [r for r, y in zip(records, labels) if y and "hard=1" in r.description]
    orf_lnc = [r for r, y in zip(records, labels) if not y and "hard=1" in r.description]
    assert short_cds and orf_lnc
    for r in orf_lnc:
        assert 150 <= longest_orf(r.seq).length <= 3 * 141


def test_write_synthetic_gives_two_fasta_files(tmp_path):
    coding, noncoding = write_synthetic(tmp_path, 3, 4)
    assert coding.read_text().count(">") == 3 and noncoding.read_text().count(">") == 4


def test_stratified_split_keeps_proportions_and_is_fixed_by_seed():
    labels = [1] * 100 + [0] * 60
    s = stratified_split(labels, val=0.1, test=0.2, seed=0)
    assert sorted(s["train"] + s["val"] + s["test"]) == list(range(160))
    assert sum(labels[i] for i in s["test"]) == 20 and len(s["test"]) == 32
    assert s == stratified_split(labels, val=0.1, test=0.2, seed=0)
    assert s["test"] != stratified_split(labels, val=0.1, test=0.2, seed=1)["test"]
    with pytest.raises(DataError, match="fractions"):
        stratified_split(labels, val=0.6, test=0.5)


@pytest.fixture(scope="session")
def cpat():
    from lorakit.domains.genomics.cpat_data import load_cpat_human
    try:
        return load_cpat_human()
    except DataError as err:
        if "could not download" in str(err):
            pytest.skip(f"CPAT data not reachable: {err}")
        raise


def test_cpat_human_set_is_4000_mrnas_and_4000_lncrnas(cpat):
    records, labels = cpat
    assert len(records) == 8000 and sum(labels) == 4000
    assert len({r.id for r in records}) == 8000
    assert records[0].id.startswith("hg19_ct_UserTrack")
    split = stratified_split(labels, seed=0)
    assert {k: len(v) for k, v in split.items()} == {"train": 5600, "val": 800, "test": 1600}
    assert sum(labels[i] for i in split["test"]) == 800


def test_cpat_fetch_reuses_its_cache(cpat, monkeypatch):
    from lorakit.domains import downloads
    from lorakit.domains.genomics import cpat_data
    def no_download(*a, **k):
        raise AssertionError("downloaded again")
    monkeypatch.setattr(downloads.subprocess, "run", no_download)
    paths = cpat_data.fetch_cpat_human()
    assert all(p.is_file() for p in paths.values())
