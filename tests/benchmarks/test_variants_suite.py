"""The variants suite: its protocol on validation numbers, its sentence classifier trained
through `AdapterModule` + `fit`, and (slow) the whole `--quick` suite on MiniLM."""
import math

import pytest
import torch

from lorakit.benchmarks.common.validation_protocol import choose_lr, mean_sd, steps_to_reach


def test_choose_lr_keeps_the_best_validation_accuracy():
    sweep = {3e-4: {"val_acc": 0.71, "val_loss": 0.55},
             1e-3: {"val_acc": 0.78, "val_loss": 0.60},
             3e-3: {"val_acc": 0.74, "val_loss": 0.50}}
    assert choose_lr(sweep) == 1e-3


def test_choose_lr_breaks_accuracy_ties_on_lower_validation_loss():
    sweep = {3e-4: {"val_acc": 0.75, "val_loss": 0.58},
             1e-3: {"val_acc": 0.75, "val_loss": 0.52}}
    assert choose_lr(sweep) == 1e-3


def test_choose_lr_never_picks_a_diverged_run_while_another_is_finite():
    sweep = {3e-4: {"val_acc": 0.60, "val_loss": 0.66},
             3e-3: {"val_acc": 0.90, "val_loss": math.nan}}
    assert choose_lr(sweep) == 3e-4


def test_choose_lr_refuses_an_empty_sweep():
    with pytest.raises(ValueError):
        choose_lr({})


def test_steps_to_reach_is_the_first_validation_step_at_or_below_the_target():
    curve = [(10, 0.69), (20, 0.61), (30, 0.55), (40, 0.58), (50, 0.52)]
    assert steps_to_reach(curve, 0.58) == 30
    assert steps_to_reach(curve, 0.55) == 30
    assert steps_to_reach(curve, 0.52) == 50
    assert steps_to_reach(curve, 0.50) is None


def test_mean_sd_uses_the_sample_standard_deviation():
    assert mean_sd([80.0, 82.0, 84.0]) == (82.0, 2.0)
    assert mean_sd([70.0]) == (70.0, 0.0)
    assert all(math.isnan(v) for v in mean_sd([]))


@pytest.fixture
def tiny_encoder():
    from transformers import BertConfig, BertModel

    def make():
        torch.manual_seed(0)
        return BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32,
                                    max_position_embeddings=16))
    return make


def _items(n=32):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(1, 40, (int(torch.randint(3, 9, (1,), generator=g)),),
                                        generator=g), "labels": i % 2} for i in range(n)]


@pytest.mark.parametrize("method", ["lora", "lora_sb", "ggpo", "balora", None])
def test_sentence_classifier_fits_through_adapter_module_and_records_its_curve(
        tiny_encoder, tmp_path, method):
    import lightning.pytorch as pl

    from lorakit import LoRAConfig, init_from_gradients
    from lorakit.benchmarks.common.sentence_classifier import SentenceClassifier, accuracy, loader
    from lorakit.training.module import AdapterModule

    config = None if method is None else LoRAConfig(method=method, rank=2)
    module = SentenceClassifier(tiny_encoder(), config, lr=1e-2, output_dir=str(tmp_path))
    assert isinstance(module, AdapterModule)
    items = _items()
    if method == "lora_sb":
        init_from_gradients(module, module.adapters, list(loader(items, 8, seed=1))[:2],
                            lambda m, b: m.loss(b))
    trainer = pl.Trainer(max_steps=4, val_check_interval=2, check_val_every_n_epoch=None,
                         num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         accelerator="cpu")
    trainer.fit(module, loader(items, 8, seed=0), loader(items, 16))
    assert [step for step, _, _ in module.val_curve] == [2, 4]
    assert len(module.step_times) == 4
    assert 0.0 <= accuracy(module, loader(items, 16)) <= 1.0
    head = 16 * 2 + 2
    trainable = sum(p.numel() for p in module.trainable_parameters())
    expected = {"lora": 2 * 2 * 2 * 16, "lora_sb": 2 * 4, "ggpo": 2 * 2 * 2 * 16,
                "balora": 2 * 2 * 2 * 16}
    if method is None:
        assert trainable == sum(p.numel() for p in module.parameters())
    else:
        assert trainable == expected[method] + head
        assert (tmp_path / "adapter.safetensors").exists()


@pytest.mark.slow
def test_quick_variants_suite_trains_every_method_on_minilm(tmp_path):
    from lorakit.benchmarks.suites.variants import METHODS, run

    result = run(tmp_path, threads=1, quick=True)
    assert [r["method"] for r in result["rows"]] == [name for name, _, _ in METHODS]
    lora = next(r for r in result["rows"] if r["method"] == "LoRA")
    assert lora["adapter_params"] == 6 * 2 * 8 * (384 + 384)   # rank 8 on query/value
    assert 0.0 < result["figures"]["lora_sb_adapter_param_ratio"] < 0.1
    assert (tmp_path / "accuracy_in_vs_ood.png").exists()


def _result(name, accs, curve_losses):
    seeds = {seed: ({"val_loss": curve_losses[-1], "val_acc": 0.5, "steps": 20,
                     "curve": list(zip((10, 20), curve_losses)), "step_s": 0.5,
                     "trainable": 1000, "adapter_params": 900}, acc)
             for seed, acc in enumerate(accs)}
    return {"name": name, "lr": 1e-3, "sweep": {1e-3: seeds[0][0]}, "seeds": seeds}


def test_a_task_without_ood_domains_has_no_ood_columns_or_goals():
    from lorakit.benchmarks.suites.variants import SENTIMENT, WORDNET, goal_figures, method_row

    assert WORDNET.num_labels == 45 and WORDNET.ood == () and SENTIMENT.ood
    rows = {}
    for name, key in [("LoRA", "lora"), ("LoRA-GA", "lora_ga"), ("LoRA-SB", "lora_sb"),
                      ("ALLoRA", "allora"), ("LoRA-GGPO", "ggpo"), ("BA-LoRA", "balora")]:
        accs = [{"wordnet": 0.40}, {"wordnet": 0.44}]
        rows[key] = method_row(_result(name, accs, (0.9, 0.7)), 0.7, mean_sd, steps_to_reach,
                               WORDNET)
    lora = rows["lora"]
    assert lora["in_domain_acc"] == pytest.approx(42.0) and lora["in_domain_acc_sd"] > 0
    assert not any("ood" in column for column in lora)
    assert lora["steps_to_lora_final_val_loss"] == 20 and lora["reached"] == "2/2"
    figures = goal_figures(rows, ood=False)
    assert figures["lora_sb_in_domain_acc_minus_lora"] == 0.0
    assert not any("ood" in name for name in figures)


def test_the_sentiment_rows_average_the_three_ood_domains():
    from lorakit.benchmarks.suites.variants import method_row

    accs = [{"movies": 0.8, "tweets": 0.6, "amazon": 0.7, "nyt": 0.8}]
    row = method_row(_result("LoRA", accs, (0.6, 0.5)), 0.45, mean_sd, steps_to_reach)
    assert row["ood_acc"] == pytest.approx(70.0) and row["tweets_acc"] == pytest.approx(60.0)
    assert row["steps_to_lora_final_val_loss"] is None and row["reached"] == "0/1"


@pytest.mark.slow
def test_quick_wordnet_variants_suite_has_45_classes_and_no_ood(tmp_path):
    from lorakit.benchmarks.suites.variants import METHODS, run_wordnet

    result = run_wordnet(tmp_path, threads=1, quick=True)
    assert [r["method"] for r in result["rows"]] == [name for name, _, _ in METHODS]
    lora = next(r for r in result["rows"] if r["method"] == "LoRA")
    assert lora["trainable_params"] - lora["adapter_params"] == 384 * 45 + 45
    assert not any("ood" in column for column in lora)
    assert (tmp_path / "accuracy.png").exists()


def test_paired_differences_pair_seeds_and_give_a_t_interval():
    from lorakit.benchmarks.suites.variants import paired_differences

    def record(per_seed):
        return {"seeds": {str(s): {"test": {"movies": m, "tweets": o, "amazon": o, "nyt": o}}
                          for s, (m, o) in enumerate(per_seed)}}
    lora = record([(0.80, 0.70), (0.70, 0.60), (0.90, 0.80)])
    # ALLoRA 2, 3 and 4 points above LoRA out of distribution, seed by seed
    allora = record([(0.80, 0.72), (0.70, 0.63), (0.90, 0.84)])
    runs = {"lora": lora, "allora": allora, "lora_sb": lora, "ggpo": lora, "balora": lora}
    f = paired_differences(runs)
    assert f["allora_ood_acc_minus_lora_paired"] == pytest.approx(3.0)
    half = 4.303 * 1.0 / 3 ** 0.5                 # SD of (2, 3, 4) is 1
    assert f["allora_ood_acc_minus_lora_paired_ci95_low"] == pytest.approx(3.0 - half)
    assert f["allora_ood_acc_minus_lora_paired_ci95_high"] == pytest.approx(3.0 + half)
    assert f["lora_sb_in_domain_acc_minus_lora_paired"] == 0.0


def test_paired_differences_read_a_running_suites_records_through_jsonable():
    from lorakit.benchmarks.suites.variants import WORDNET, _jsonable, paired_differences

    def record(accs):   # run()'s in-memory layout: seed -> (validation summary, test)
        return {"name": "m", "lr": 1e-3, "sweep": {1e-3: {}},
                "seeds": {seed: ({}, {"wordnet": a}) for seed, a in enumerate(accs)}}
    runs = {k: record([0.40, 0.50]) for k in ("lora", "allora", "ggpo", "balora")}
    runs["lora_sb"] = record([0.42, 0.53])
    f = paired_differences(_jsonable(runs), WORDNET)
    assert f["lora_sb_in_domain_acc_minus_lora_paired"] == pytest.approx(2.5)
    assert set(f) == {"lora_sb_in_domain_acc_minus_lora_paired",
                      "lora_sb_in_domain_acc_minus_lora_paired_ci95_low",
                      "lora_sb_in_domain_acc_minus_lora_paired_ci95_high"}
