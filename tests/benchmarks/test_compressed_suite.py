"""The compressed suite's bookkeeping: its contenders, the bytes of a compressed base, the
figures against QLoRA, and (slow) a `--quick` run of a few contenders."""
import math

import pytest
import torch
from torch import nn

from lorakit.benchmarks.suites.compressed import CONTENDERS, base_bytes, goal_figures


def test_every_family_of_the_issue_has_its_contenders_and_keys_are_unique():
    keys = [c.key for c in CONTENDERS]
    assert len(keys) == len(set(keys))
    assert [c.key for c in CONTENDERS if not c.trains] == ["untuned"]
    assert {"lora", "qlora_nf4", "qlora_int4", "loftq_nf4", "l4q_4", "l4q_3", "loraprune_20",
            "loraprune_50", "taylor_50", "magnitude_50", "loram_50", "loram_50_align",
            "qloram_50_align"} <= set(keys)
    assert sum(k.startswith("lq_lora_") for k in keys) == 4


def test_the_default_run_takes_smollm2s_hour_sized_rows_and_only_names_the_rest():
    from lorakit.benchmarks.suites.compressed import selected

    lm = [c.key for c in selected("austen", None)]
    assert "lq_lora_3" not in lm and "qlora_int4" not in lm and "loram_50" in lm
    assert [c.key for c in selected("austen", ["lq_lora_3"])] == ["lq_lora_3"]
    cls = [c.key for c in selected("sentiment", None)]
    assert "lq_lora_3" in cls and "untuned" not in cls and "loram_50" not in cls


def test_base_bytes_counts_a_quantized_matrix_at_its_storage_and_the_rest_at_full_size():
    from lorakit.layers.quantized import QuantizedLinear

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.Linear(128, 64))
    full = base_bytes(model, ["0", "1"])
    assert full["base_mb"] * 2**20 == (64 * 128 * 2 + 128 + 64) * 4
    assert full["adapted_bits"] == 32
    model[0] = QuantizedLinear.from_linear(model[0], "int4")
    mixed = base_bytes(model, ["0", "1"])
    quantized = model[0].nbytes()
    assert mixed["base_mb"] * 2**20 == quantized + 128 * 4 + (128 * 64 + 64) * 4
    assert mixed["adapted_bits"] == pytest.approx(8 * (quantized + 128 * 64 * 4) / (2 * 64 * 128))
    # adapters attached (as LoftQ and LQ-LoRA hand the model over): the same bytes, once
    import lorakit

    lorakit.attach(model, lorakit.LoRAConfig(rank=4, targets=["0", "1"]))
    assert base_bytes(model, ["0", "1"]) == mixed


def _row(task, key, quality, step_s=1.0):
    metric = "test_ppl" if task == "austen" else "test_acc"
    return {"task": task, "key": key, "contender": key, metric: quality, "base_mb": 10.0,
            "peak_train_mb": 5.0, "step_s": step_s, "lr": 1e-3, "adapted_bits": 4.0,
            "val_acc": quality, "ood_acc": quality, "val_ppl": quality}


def test_goal_figures_set_each_row_against_qlora_nf4_and_skip_failed_rows():
    rows = [_row("austen", "qlora_nf4", 20.0, 2.0), _row("austen", "lq_lora_3", 18.5, 2.4),
            _row("sentiment", "lora", 0.8), {"task": "sentiment", "key": "l4q_4", "error": "x"}]
    f = goal_figures(rows)
    assert f["austen_lq_lora_3_test_ppl_minus_qlora_nf4"] == pytest.approx(-1.5)
    assert f["austen_lq_lora_3_step_s_vs_qlora_nf4"] == pytest.approx(1.2)
    assert f["sentiment_lora_test_acc"] == 0.8
    assert "sentiment_lora_test_acc_minus_qlora_nf4" not in f      # no QLoRA row there
    assert not any(k.startswith("sentiment_l4q_4") for k in f)
    assert all(math.isfinite(v) for v in f.values())


@pytest.mark.slow
def test_quick_compressed_suite_runs_a_quantized_a_pruned_and_an_exported_contender(tmp_path):
    from lorakit.benchmarks.suites.compressed import run

    result = run(tmp_path, threads=1, quick=True, tasks=["sentiment"],
                 only=["qlora_nf4", "l4q_4", "loraprune_50"])
    rows = {r["key"]: r for r in result["rows"]}
    assert all("error" not in r for r in rows.values()), rows
    assert rows["qlora_nf4"]["adapted_bits"] < 5
    assert rows["loraprune_50"]["params_kept"] < 1
    assert rows["l4q_4"]["export_mb"] < rows["l4q_4"]["base_mb"]
    assert (tmp_path / "quality_vs_memory.png").exists()


def test_combine_lets_a_rerun_replace_its_row_and_keeps_the_suite_order(tmp_path):
    import json

    from lorakit.benchmarks.suites.compressed import combine

    first, rerun = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"rows": [_row("sentiment", "loftq_nf4", 0.70),
                                          _row("sentiment", "qlora_nf4", 0.77)]}))
    rerun.write_text(json.dumps({"rows": [_row("sentiment", "loftq_nf4", 0.78)]}))
    result = combine([first, rerun], tmp_path / "out")
    assert [(r["key"], r["test_acc"]) for r in result["rows"]] == [
        ("qlora_nf4", 0.77), ("loftq_nf4", 0.78)]
    assert result["rows"][1]["source"] == str(rerun)
    assert "| 78.0 |" in (tmp_path / "out" / "tables.md").read_text()
    assert (tmp_path / "out" / "quality_vs_memory.png").exists()
