"""The s2lora-whisper suite's bookkeeping: rank grids, the rank correlation and the goals
(the training itself runs in `lorakit bench --suite s2lora-whisper --quick`)."""
import math

import pytest

from lorakit.benchmarks.suites.s2lora_whisper import (
    ADA,
    MATRICES,
    S2,
    TEST_SETS,
    figures,
    rank_grid,
    spearman,
)


def test_rank_grid_puts_encoder_blocks_first_and_leaves_missing_matrices_empty():
    ranks = {"decoder.blocks.0.cross_attn.key": 3, "encoder.blocks.1.mlp.0": 5,
             "encoder.blocks.0.attn.query": 2}
    blocks, grid = rank_grid(ranks)
    assert blocks == ["encoder.0", "encoder.1", "decoder.0"]
    assert grid[0][MATRICES.index("attn.query")] == 2
    assert grid[1][MATRICES.index("mlp.0")] == 5
    assert grid[2][MATRICES.index("cross_attn.key")] == 3
    assert math.isnan(grid[0][MATRICES.index("cross_attn.key")])


def test_spearman_is_nan_for_a_constant_pattern_and_one_for_a_monotone_one():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def row(method, params, child, ood, lr=2e-3):
    return {"method": method, "lr": lr, "trainable_params": params,
            **{f"{s}_wer": w for s, w in zip(TEST_SETS, (child, ood, 0.05, 0.3))}}


def test_figures_compare_s2lora_with_adalora_and_count_exact_zeros():
    rows = [row("zero-shot base", 0, 0.5, 0.7, lr=0.0), row(ADA, 800_000, 0.10, 0.30),
            row(S2, 40_000, 0.105, 0.28)]
    rows[2]["adult_real_wer"] = 0.35
    ranks = {S2: {"a": 0, "b": 2, "c": 6, "d": 0}, ADA: {"a": 1, "b": 4, "c": 8, "d": 2}}
    f = figures(rows, [], ranks)
    assert f["s2lora_params_over_adalora"] == pytest.approx(0.05)
    assert f["s2lora_child_wer_over_adalora"] == pytest.approx(1.05)
    assert f["s2lora_ood_wer_minus_adalora"] == pytest.approx(-0.02)
    assert f["s2lora_lambda_exact_zero_fraction"] == pytest.approx(1 - 8 / 32)
    assert f["rank_matrices_compared"] == 4
    assert f["s2lora_adalora_rank_spearman"] > 0.9
    assert f["s2lora_adult_real_wer_change"] == pytest.approx(0.05)
    assert f["s2lora_chosen_lr"] == 2e-3
