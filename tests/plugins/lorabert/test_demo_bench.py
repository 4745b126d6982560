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
    from lorakit.reports.bench import run_suite
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
    for n in (300, 600, 1200):
        assert all(-1 <= r[f"mcc_{n}"] <= 1 and 0 <= r[f"auroc_{n}"] <= 1 for r in res["rows"])
        assert 0 < figures[f"n_fragments_{n}_lncrna"] < figures[f"n_fragments_{n}"] <= 400
        lo, hi = (figures[f"lora_mcc_minus_orf_at_{n}_ci95_{e}"] for e in ("lo", "hi"))
        assert lo <= figures[f"lora_mcc_minus_orf_at_{n}"] <= hi
    length_only = next(r for r in res["rows"] if r["name"] == "length only")
    assert length_only["auroc_300"] == 0.5  # fragments of one length: no signal at all
    assert figures["n_mouse"] == 100 and figures["frozen_settings"] == 0
    assert all(0 <= r["mouse_recall"] <= 1 and r["temperature"] > 0 for r in res["rows"])
    for name in ("reliability.png", "reliability_lora_bert.png", "fragments.png"):
        assert (tmp_path / name).is_file()
