"""The base-selection rule: the better validation mean wins only by more than the noise."""
from lorakit.benchmarks.studies.lorabert_base_selection import choose


def runs(*mccs):
    return [{"val_mcc": m} for m in mccs]


def test_a_clearly_better_base_is_chosen():
    assert choose({"small": runs(0.90, 0.91, 0.92), "big": runs(0.95, 0.96, 0.94)},
                  ["small", "big"]) == "big"


def test_a_gap_inside_the_seed_noise_keeps_the_smaller_base():
    assert choose({"small": runs(0.90, 0.93, 0.87), "big": runs(0.92, 0.95, 0.89)},
                  ["small", "big"]) == "small"


def test_the_smaller_base_wins_when_it_is_better():
    assert choose({"small": runs(0.93, 0.94), "big": runs(0.90, 0.91)},
                  ["small", "big"]) == "small"
