"""End to end on CPAT's human data: slow, run through the benchmarks, not in CI."""
import json

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.timeout(1800)
def test_demo_reports_lora_bert_and_the_baselines(tmp_path):
    from lorakit.domains.genomics.external import find_cpc2
    from lorakit.plugins.lorabert.demo import demo
    figures = demo(tmp_path, threads=1, train_per_class=60, epochs=1, test_per_class=40)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["LoRA-BERT", "ORF/Fickett/hexamer LR", "k-mer LR",
                                         "length only"] + (["CPC2 (shipped model)"]
                                                           if find_cpc2() else [])
    for name in ("report.md", "roc.png", "predictions.tsv"):
        assert (tmp_path / name).is_file()
    assert figures["lora_bert_auroc"] > 0.6 and figures["n_test"] == 80


@pytest.mark.timeout(1800)
def test_quick_benchmark_gives_rows_figures_and_the_roc_plot(tmp_path):
    from lorakit.bench import run_suite
    res = run_suite("lorabert", tmp_path, threads=1, quick=True)
    names = [r["name"] for r in res["rows"]]
    assert names[:6] == ["LoRA-BERT", "full fine-tuning", "frozen encoder + head",
                         "ORF/Fickett/hexamer LR", "k-mer LR", "length only"]
    figures = res["figures"]
    assert figures["lora_param_fraction"] <= 0.05
    for metric in ("mcc", "auroc"):
        lo, hi = (figures[f"lora_{metric}_minus_best_classic_ci95_{e}"] for e in ("lo", "hi"))
        assert lo <= figures[f"lora_{metric}_minus_best_classic"] <= hi
    assert (tmp_path / "report.md").is_file() and (tmp_path / "roc.png").is_file()
