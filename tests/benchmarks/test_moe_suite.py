"""The moe suite: its rows at equal parameters, its summary and goal figures, its multi-task
model, and (slow) the whole `--quick` suite on MiniLM."""
import json

import pytest
import torch
from torch import nn

import lorakit
from lorakit.benchmarks.suites.merge import TASKS
from lorakit.benchmarks.suites.moe import (
    ROWS,
    MultiTaskClassifier,
    collate_tasks,
    goal_figures,
    summary_rows,
)


def ffn_model():
    """A tiny BERT whose module paths are MiniLM's (encoder.layer.N....), 6 layers."""
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=6,
                                num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=32)).eval()


def adapter_count(fields: dict) -> int:
    adapters = lorakit.attach(ffn_model(), lorakit.LoRAConfig(**fields))
    return adapters.trainable_count()


def test_lora_r36_holds_as_many_parameters_as_eight_rank4_experts_with_routers_on_minilm():
    """Per layer, the FFN's two modules (d -> f and f -> d) hold 2 · 8 · 4 · (d + f) expert
    numbers and, with a router per module (LoRAMoE), 8 · (d + f) router numbers (one router
    row of width d, one of width f per expert), = 2 · 36 · (d + f): a LoRA of rank 36, for
    any d and f (MiniLM: 384, 1536). MixLoRA routes once per FFN, from its input: 8 · d."""
    assert 2 * 8 * 4 * (384 + 1536) + 8 * (384 + 1536) == 2 * 36 * (384 + 1536)
    loramoe = adapter_count(ROWS["LoRAMoE (dense 8, LBC)"])
    assert loramoe == 6 * (2 * 8 * 4 * (16 + 64) + 8 * (16 + 64))
    assert adapter_count(ROWS["LoRA r=36 (equal parameters)"]) == loramoe
    assert adapter_count(ROWS["MixLoRA (top-2 of 8)"]) == 6 * (2 * 8 * 4 * (16 + 64) + 8 * 16)
    increasing = lorakit.attach(ffn_model(), lorakit.LoRAConfig(
        **ROWS["MoLA increasing (2,2,4,4,6,6)"]))
    counts = [v.n_experts for p, v in increasing.variants().items() if "intermediate" in p]
    assert counts == [2, 2, 4, 4, 6, 6] and sum(counts) == 6 * ROWS[
        "MoLA uniform (4 per layer)"]["n_experts"]


def test_a_mixed_batch_goes_through_each_rows_task_head_and_adds_the_balance_loss():
    module = MultiTaskClassifier(ffn_model(), lorakit.LoRAConfig(**ROWS["MixLoRA (top-2 of 8)"]),
                                 lr=1e-3)
    items = [{"input_ids": torch.randint(1, 60, (5,)), "labels": i % 2, "task": i}
             for i in range(len(TASKS))]
    batch = collate_tasks(items)
    loss, correct, n = module.scores(batch)
    emb = module.embed(batch)
    want = sum(nn.functional.cross_entropy(module.heads[t](emb[i:i + 1]),
                                           batch["labels"][i:i + 1]) for i, t in enumerate(TASKS))
    assert n == 5 and loss.item() == pytest.approx(want.item() / 5, rel=1e-5)
    step = module.training_step(batch, 0)
    assert step.item() > loss.item()         # + the Switch balance loss (≈ 0.01 · 2)


def per_seed(avg: float, **extra) -> dict:
    return {"test": {t: avg for t in TASKS}, "trainable": 100, "step_s": 1.0,
            "fit_peak_mb": 500.0, "drift": 0.1, **extra}


def test_summary_and_goal_figures_from_hand_made_runs():
    rows = {name: per_seed(70.0) for name in ROWS}
    rows["MixLoRA (top-2 of 8)"] = per_seed(72.5, step_s=1.2)
    rows["LoRAMoE (dense 8, LBC)"] = per_seed(70.0, drift=0.04)
    rows["MoLA increasing (2,2,4,4,6,6)"] = per_seed(71.0)
    for t in TASKS:
        rows[f"single LoRA: {t}"] = {"test": {u: 60.0 + (t == "nyt") for u in TASKS},
                                     "trainable": None}
    rows["linear merge (average of the five)"] = {"test": {u: 65.0 for u in TASKS}}
    rows["X-LoRA (five single-task LoRAs)"] = per_seed(66.0, step_s=2.0)
    second = {**rows, "MixLoRA (top-2 of 8)": per_seed(73.5, step_s=1.2)}
    table = summary_rows({0: rows, 1: second})
    mix = next(r for r in table if r["row"] == "MixLoRA (top-2 of 8)")
    assert mix["average_acc"] == 73.0 and mix["average_acc_sd"] == pytest.approx(2 ** 0.5 / 2)
    figures = goal_figures(table)
    assert figures["mixlora_minus_lora_equal_params"] == pytest.approx(3.0)
    assert figures["mola_increasing_minus_uniform"] == pytest.approx(1.0)
    assert figures["loramoe_drift_minus_lora_drift"] == pytest.approx(-0.06)
    assert figures["xlora_minus_best_single"] == pytest.approx(66.0 - 61.0)
    assert figures["xlora_minus_linear_merge"] == pytest.approx(1.0)
    assert figures["mixlora_step_time_over_active_lora"] == pytest.approx(1.2)


@pytest.mark.slow
def test_quick_moe_suite_runs_end_to_end_on_minilm(tmp_path):
    from lorakit.reports.bench import run_suite

    result = run_suite("moe", tmp_path, threads=1, quick=True)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["suite"] == "moe" and (tmp_path / "report.md").is_file()
    assert (tmp_path / "accuracy_per_task.png").is_file()
    assert all((tmp_path / f"routing_{t}.png").is_file() for t in TASKS)
    names = [r["row"] for r in result["rows"]]
    assert set(ROWS) <= set(names) and "X-LoRA (five single-task LoRAs)" in names
    assert "mixlora_step_time_over_active_lora" in result["figures"]
    info = lorakit.read_adapter(next((tmp_path / "adapters").glob("mixlora-seed0*")))[0]
    assert info["config"]["method"] == "mixture"
