"""ORF / Fickett / hexamer features, baselines on synthetic data, and the metrics."""
import numpy as np
import pytest

from lorakit.domains.genomics.baselines import Baseline
from lorakit.domains.genomics.features import (
    HexamerTable,
    fickett_score,
    kmer_frequencies,
    longest_orf,
)
from lorakit.domains.genomics.metrics import (
    auroc,
    binary_metrics,
    markdown_table,
    paired_bootstrap,
    plot_roc,
    roc_curve,
)
from lorakit.domains.genomics.synthetic import synthetic_transcripts


def test_longest_orf_finds_the_longest_complete_atg_to_stop_in_any_frame():
    seq = "CC" + "ATG" + "AAA" * 5 + "TAG" + "G" + "ATG" + "CCC" * 10 + "TGA" + "TT"
    orf = longest_orf(seq)
    assert (orf.start, orf.length) == (24, 36) and seq[orf.start:orf.start + 3] == "ATG"
    assert seq[orf.end - 3:orf.end] == "TGA"
    assert longest_orf("ATGAAACCC") is None  # no stop codon: not a complete ORF


def test_fickett_score_is_higher_for_a_coding_sequence_than_for_a_repeat():
    records, labels = synthetic_transcripts(5, 0, seed=1)
    cds = [r for r in records][0]
    start, end = (int(x) for x in cds.description.split()[0][4:].split("-"))
    assert fickett_score(cds.seq[start - 1:end]) > fickett_score("AT" * 300)
    assert 0 < fickett_score(cds.seq) < 1.5


def test_hexamer_score_separates_coding_from_noncoding():
    records, labels = synthetic_transcripts(60, 60, seed=2)
    seqs = [r.seq for r in records]
    table = HexamerTable.fit([s for s, y in zip(seqs, labels) if y],
                             [s for s, y in zip(seqs, labels) if not y])
    test, test_labels = synthetic_transcripts(30, 30, seed=3)
    scores = [table.score(r.seq) for r in test]
    assert auroc(test_labels, scores) > 0.9


def test_kmer_frequencies_sum_to_one_per_k():
    m = kmer_frequencies(["ACGTACGT", "AAAA"], ks=(1, 2))
    assert m.shape == (2, 4 + 16)
    assert np.allclose(m[:, :4].sum(1), 1) and np.allclose(m[:, 4:].sum(1), 1)


@pytest.mark.parametrize("kind,floor", [("orf", 0.95), ("kmer", 0.8), ("length", 0.7)])
def test_baselines_beat_chance_on_synthetic_transcripts(kind, floor):
    train, y = synthetic_transcripts(80, 80, seed=4)
    test, yt = synthetic_transcripts(40, 40, seed=5)
    b = Baseline(kind).fit([r.seq for r in train], y)
    assert binary_metrics(yt, b.predict_proba([r.seq for r in test]))["auroc"] > floor
    assert b.n_parameters() > 0


def test_metrics_match_scikit_learn():
    from sklearn.metrics import matthews_corrcoef, roc_auc_score
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1).round(2)  # with ties
    m = binary_metrics(y, p)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, p >= 0.5))
    tp = ((p >= 0.5) & (y == 1)).sum()
    assert m["sensitivity"] == pytest.approx(tp / (y == 1).sum())
    assert m["precision"] == pytest.approx(tp / (p >= 0.5).sum())


def test_perfect_and_inverted_scores():
    assert binary_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])["mcc"] == 1.0
    assert binary_metrics([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])["auroc"] == 0.0
    fpr, tpr = roc_curve([0, 1], [0.2, 0.7])
    assert list(fpr) == [0, 0, 1] and list(tpr) == [0, 1, 1]


def test_roc_plot_and_table_are_written(tmp_path):
    path = plot_roc({"a": ([0, 1, 0, 1], [0.1, 0.9, 0.4, 0.6])}, tmp_path / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = markdown_table([{"name": "a", "mcc": 0.5}], ["name", "mcc"])
    assert table.splitlines()[2] == "| a | 0.500 |"


def test_paired_bootstrap_separates_a_real_gap_from_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    good = np.clip(y + rng.normal(0, 0.35, 600), 0, 1)
    bad = np.clip(y + rng.normal(0, 0.9, 600), 0, 1)
    gap = paired_bootstrap(y, good, bad, "mcc", n=300)
    assert gap["lo"] > 0 and gap["diff"] == pytest.approx(
        binary_metrics(y, good)["mcc"] - binary_metrics(y, bad)["mcc"])
    # two scorers of the same quality on 100 transcripts: the interval straddles zero
    a, b = (y[:100] + rng.normal(0, 0.6, 100) for _ in range(2))
    tie = paired_bootstrap(y[:100], a, b, "auroc", n=300)
    assert tie["lo"] < 0 < tie["hi"]
    with pytest.raises(ValueError, match="600 labels"):
        paired_bootstrap(y, good, bad[:10], "mcc")
