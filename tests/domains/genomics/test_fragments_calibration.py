"""Random fragments of transcripts, and the calibration measures (Brier, reliability,
best threshold, temperature scaling)."""
import numpy as np
import pytest

from lorakit.domains.genomics.calibration import (
    apply_temperature,
    best_threshold,
    brier,
    fit_temperature,
    log_loss,
    plot_reliability,
    reliability,
)
from lorakit.domains.genomics.fragments import random_fragments
from lorakit.domains.genomics.metrics import binary_metrics


def test_fragments_have_the_length_come_from_their_transcript_and_skip_short_ones():
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), n)) for n in (50, 400, 299, 300, 1000)]
    kept, frags = random_fragments(seqs, 300, seed=1)
    assert kept == [1, 3, 4]  # 50 and 299 nt are shorter than 300: skipped, not kept whole
    assert [len(f) for f in frags] == [300, 300, 300]
    assert frags[1] == seqs[3]  # exactly the length: the whole transcript
    assert all(f in seqs[i] for i, f in zip(kept, frags))


def test_fragments_are_the_same_per_seed_and_start_anywhere_they_fit():
    seqs = ["ACGTTGCA"] * 300
    assert random_fragments(seqs, 5, seed=3) == random_fragments(seqs, 5, seed=3)
    assert random_fragments(seqs, 5, seed=3) != random_fragments(seqs, 5, seed=4)
    starts = {"ACGTTGCA".index(f) for f in random_fragments(seqs, 5, seed=3)[1]}
    assert starts == {0, 1, 2, 3}  # both ends reachable, nothing past the end
    with pytest.raises(ValueError, match="length"):
        random_fragments(seqs, 0)


def test_brier_is_the_mean_squared_error_of_the_probability():
    assert brier([1, 0, 1, 0], [1.0, 0.0, 0.5, 0.25]) == pytest.approx((0.25 + 0.0625) / 4)
    assert brier([1, 0], [0.0, 1.0]) == 1.0


def test_best_threshold_matches_a_brute_force_search_and_finds_a_perfect_cut():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, 300), 0, 1)
    thr, mcc = best_threshold(y, p)
    brute = max(binary_metrics(y, p, t)["mcc"] for t in np.unique(p))
    assert mcc == pytest.approx(brute) and binary_metrics(y, p, thr)["mcc"] == pytest.approx(mcc)
    assert best_threshold([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.9]) == (0.3, 1.0)


def test_temperature_scaling_undoes_overconfidence_without_moving_any_call():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(int)  # calibrated at T = 1
    overconfident = 1 / (1 + np.exp(-3 * z))
    t = fit_temperature(y, overconfident)
    assert t == pytest.approx(3.0, rel=0.1)
    fixed = apply_temperature(overconfident, t)
    assert np.array_equal(fixed >= 0.5, overconfident >= 0.5)
    order = np.argsort(overconfident)
    assert np.all(np.diff(fixed[order]) >= 0)  # the same ranking: the same AUROC
    assert brier(y, fixed) < brier(y, overconfident)
    assert log_loss(y, fixed) < log_loss(y, overconfident)
    with pytest.raises(ValueError, match="both classes"):
        fit_temperature([1, 1], [0.2, 0.9])


def test_reliability_of_calibrated_probabilities_lies_on_the_diagonal(tmp_path):
    rng = np.random.default_rng(2)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    r = reliability(y, p, bins=10)
    assert r["count"].sum() == 20000 and len(r["predicted"]) == 10
    assert np.abs(r["predicted"] - r["observed"]).max() < 0.03 and r["ece"] < 0.02
    skewed = reliability(y, p ** 3)  # under-confident about coding
    assert skewed["ece"] > 0.1
    path = plot_reliability({"calibrated": (y, p), "skewed": (y, p ** 3)},
                            tmp_path / "rel.png", title="t")
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"

