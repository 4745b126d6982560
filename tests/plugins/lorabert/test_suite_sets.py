"""The suite's extra test sets: fragments of the test split, every row scored on them."""
import numpy as np
import pytest

from lorakit.benchmarks.suites import lorabert as suite
from lorakit.plugins.lorabert.data import Transcript
from lorakit.plugins.lorabert.experiment import run_baseline, split_items


def test_fragment_sets_cut_every_long_enough_test_transcript_and_keep_its_label():
    test = [Transcript(f"t{i}", "ACGT" * n, i % 2) for i, n in enumerate((50, 100, 200, 400))]
    sets = suite.fragment_sets(test, lengths=(300, 600), seed=5)
    assert [t.id for t in sets["frag300"]] == ["t1", "t2", "t3"]
    assert [t.id for t in sets["frag600"]] == ["t2", "t3"]
    for name, n in (("frag300", 300), ("frag600", 600)):
        for t in sets[name]:
            source = next(s for s in test if s.id == t.id)
            assert len(t.seq) == n and t.seq in source.seq and t.label == source.label
    assert sets == suite.fragment_sets(test, lengths=(300, 600), seed=5)


@pytest.fixture(scope="module")
def synthetic_row():
    splits = split_items("synthetic", synthetic_n=60)
    sets = {"val": splits["val"], **suite.fragment_sets(splits["test"]),
            **suite.fragment_sets(splits["val"], prefix="valfrag"),
            "mouse": [t for t in splits["test"] if t.label == 1]}
    return run_baseline("orf", splits, extra=sets), sets


def test_a_baseline_row_scores_every_extra_set_with_the_same_fitted_model(synthetic_row):
    row, sets = synthetic_row
    assert set(row["extra"]) == set(sets)
    for name, items in sets.items():
        assert len(row["extra"][name]) == len(items)
        assert all(0.0 <= p <= 1.0 for p in row["extra"][name])


def test_score_extras_gives_fragment_metrics_mouse_recall_and_calibration(synthetic_row):
    row, sets = synthetic_row
    row = dict(row)
    suite._score_extras(row, sets)
    coding_probs = np.asarray(row["extra"]["mouse"])
    assert row["mouse_recall"] == pytest.approx(np.mean(coding_probs >= 0.5))
    for n in suite.FRAGMENT_LENGTHS:
        if len({t.label for t in sets[f"frag{n}"]}) == 2:
            assert -1.0 <= row[f"mcc_{n}"] <= 1.0 and 0.0 <= row[f"auroc_{n}"] <= 1.0
            assert -1.0 <= row[f"mcc_valthr_{n}"] <= 1.0
    assert 0.0 <= row["brier"] <= 1.0 and 0.0 <= row["brier_ts"] <= 1.0
    assert row["temperature"] > 0
    assert set(suite.COLUMNS) - set(row) == set()


def test_fitted_rows_are_kept_split_over_runs_and_refitted_for_another_base(tmp_path,
                                                                            monkeypatch):
    from lorakit.plugins.lorabert import experiment

    fitted = []

    def fake_run_model(name, splits, out_dir, **kw):
        fitted.append(name)
        return {"name": name, "mcc": 0.5, "auroc": 0.6, "probs": [0.2], "labels": [0], "extra": {},
                "module": object()}
    monkeypatch.setattr(experiment, "run_model", fake_run_model)
    monkeypatch.setattr(suite, "base_id", lambda pretrained: "base-a")
    args = (tmp_path, {}, {}, 2, False, None, None)
    suite.deep_rows(*args, only=["lora"])
    suite.deep_rows(*args, only=["full"])
    rows = suite.deep_rows(*args)              # the two read back, the third fitted
    assert fitted == ["LoRA-BERT", "full fine-tuning", "frozen encoder + head"]
    assert [r["name"] for r in rows] == fitted and all("module" not in r for r in rows)
    assert (tmp_path / "runs" / "lora" / "row.json").is_file()
    monkeypatch.setattr(suite, "base_id", lambda pretrained: "base-b")
    suite.deep_rows(*args, only=["lora"])
    assert fitted[3:] == ["LoRA-BERT"]
