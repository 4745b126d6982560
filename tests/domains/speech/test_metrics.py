import pytest

from lorakit.domains.speech.metrics import error_rates, normalize


def test_normaliser_makes_spelling_case_and_numbers_agree():
    assert normalize("Five red balls!") == normalize("5 red balls")
    assert normalize("The Colour.") == "the color"


def test_wer_and_cer_count_edits_over_reference_length():
    rates = error_rates(["the red dog", "a cat"], ["the red log", "a cat sat"])
    assert rates["wer"] == pytest.approx(2 / 5)
    assert rates["cer"] == pytest.approx(5 / 16)   # d→l, then " sat" inserted
    assert rates["n"] == 2


def test_references_that_normalise_to_nothing_are_left_out():
    assert error_rates(["hmm", "yes"], ["", "yes"]) == {"wer": 0.0, "cer": 0.0, "n": 1}
