"""The forgetting suite's figures: rank correlation, the claims as numbers, and (slow) the
whole `--quick` suite on MiniLM and SmolLM2."""
import math

import pytest

from lorakit.benchmarks.suites.forgetting import ROWS, goal_figures, spearman


def test_spearman_ranks_with_ties_and_is_nan_for_a_constant_side():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take their average rank: ranks x (0.5, 0.5, 2), y (0, 1, 2)
    assert spearman([5, 5, 9], [1, 2, 3]) == pytest.approx(0.866025, rel=1e-5)
    assert math.isnan(spearman([0, 0, 0], [1, 2, 3]))


def _row(base, method, intruders, forgetting, steps=None):
    key = "drift" if base == "MiniLM" else "austen_ppl_change"
    return {"base": base, "method": method, "intruders": intruders, key: forgetting,
            "steps_to_lora_final_val_loss": steps}


def test_goal_figures_state_each_claim_as_a_number():
    rows = [_row("MiniLM", "full fine-tuning", 0, 0.30), _row("MiniLM", "LoRA r=8", 7, 0.05),
            _row("MiniLM", "rsLoRA r=64", 2, 0.10),
            _row("SmolLM2", "full fine-tuning", 1, 0.02, None),
            _row("SmolLM2", "LoRA r=8", 9, 0.08, 40), _row("SmolLM2", "LoRA-GA r=8", 12, 0.2, 15),
            _row("SmolLM2", "rsLoRA r=64", 3, 0.04, 25)]
    f = goal_figures(rows)
    assert f["minilm_lora_intruders"] == 7 and f["minilm_full_forgetting"] == 0.30
    assert f["smollm2_lora_ga_forgetting"] == 0.2
    assert f["smollm2_lora_ga_steps_to_lora_final_val_loss_ratio"] == pytest.approx(15 / 40)
    assert f["minilm_spearman_intruders_forgetting"] == pytest.approx(-1.0)
    assert f["smollm2_spearman_intruders_forgetting"] == pytest.approx(1.0)


def test_every_row_has_a_base_and_the_lm_rows_hold_lora_and_lora_ga():
    lm = [key for _, key, _, bases in ROWS if "smollm2" in bases]
    assert {"full", "lora", "lora_ga", "rslora64"} <= set(lm)
    assert all(bases for *_, bases in ROWS)


@pytest.mark.slow
def test_quick_forgetting_suite_runs_both_bases(tmp_path):
    from lorakit.benchmarks.suites.forgetting import run

    result = run(tmp_path, threads=1, quick=True)
    assert [(r["base"], r["method"]) for r in result["rows"]] == [
        (base, name) for base in ("MiniLM", "SmolLM2") for name, _, _, bases in ROWS
        if base.lower() in bases]
    lm_lora = next(r for r in result["rows"] if r["base"] == "SmolLM2" and r["method"] == "LoRA r=8")
    assert lm_lora["matrices"] == 210 and lm_lora["trainable_params"] == 30 * 8 * (
        (576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 3)
    assert result["figures"]["smollm2_base_austen_ppl"] > 1
    assert (tmp_path / "intruders_vs_forgetting.png").exists()
