"""The merge suite: its choice on validation, its goal figures, and (slow) the whole
`--quick` suite on MiniLM."""
import json

import pytest

from lorakit.benchmarks.suites.merge import TASKS, choose, goal_figures, summary_rows


def test_choose_keeps_the_best_validation_average_and_the_first_among_ties():
    assert choose([70.0, 74.0, 72.0]) == 1
    assert choose([74.0, 70.0, 74.0]) == 0


def row(test_avg: float, rank: int = 8) -> dict:
    return {"test": {t: test_avg for t in TASKS}, "rank": rank, "seconds": 0.5,
            "setting": {"w": 1.0}}


def test_summary_rows_give_mean_and_sd_over_seeds_and_keep_failures_visible():
    per_seed = {0: {"concat": row(80.0, 40), "PEFT x": {"failed": "ValueError: no"}},
                1: {"concat": row(82.0, 40), "PEFT x": {"failed": "ValueError: no"}}}
    table = summary_rows(per_seed)
    concat = table[0]
    assert concat["average_acc"] == 81.0 and concat["merged_rank"] == 40
    assert abs(concat["average_acc_sd"] - 2 ** 0.5) < 1e-9 and concat["seeds"] == 2
    assert table[1] == {"merge": "PEFT x", "failed": "ValueError: no"}


def test_goal_figures_compare_lego_with_the_best_peft_merge_at_its_rank_and_concat():
    table = [{"merge": "concat", "average_acc": 80.0},
             {"merge": "PEFT ties", "average_acc": 70.0},
             {"merge": "PEFT svd k=1r", "average_acc": 72.0},
             {"merge": "PEFT svd k=2r", "average_acc": 75.0},
             {"merge": "LoRA-LEGO k=1r", "average_acc": 74.0},
             {"merge": "LoRA-LEGO k=2r", "average_acc": 78.5}]
    figures = goal_figures(table)
    assert figures["lego_k1r_minus_best_peft_same_rank"] == 2.0
    assert figures["lego_k2r_minus_best_peft_same_rank"] == 3.5
    assert figures["lego_k1r_minus_concat"] == -6.0
    assert figures["lego_k2r_average_acc"] == 78.5


@pytest.mark.slow
def test_quick_merge_suite_runs_end_to_end_on_minilm(tmp_path):
    from lorakit.reports.bench import run_suite

    result = run_suite("merge", tmp_path, threads=1, quick=True)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["suite"] == "merge" and (tmp_path / "report.md").is_file()
    assert (tmp_path / "per_task_accuracy.png").is_file()
    names = [r["merge"] for r in result["rows"]]
    assert names[0] == "single adapter (own task)" and "concat" in names
    assert {"LoRA-LEGO k=1r", "LoRA-LEGO k=2r", "LoRA-LEGO k=4r"} <= set(names)
    by = {r["merge"]: r for r in result["rows"]}
    assert by["concat"]["merged_rank"] == 5 * 8 and by["LoRA-LEGO k=2r"]["merged_rank"] == 16
    assert "lego_k1r_minus_concat" in result["figures"]
