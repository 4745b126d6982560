"""The serving suite: its trace, its statistics, its goal ratios, and (slow) the `--quick`
suite on SmolLM2."""
import json
from collections import Counter

import pytest
import torch

from lorakit.benchmarks.suites.serving import (
    adapter_name,
    goal_figures,
    make_trace,
    percentile,
    summarise,
    write_adapters,
)


def test_trace_has_poisson_gaps_and_zipf_popularity():
    trace = make_trace(4000, 50, rate=4.0, zipf=1.0, prompt_tokens=(28, 36), vocab=(10, 20),
                       seed=0)
    gaps = [b.at - a.at for a, b in zip(trace, trace[1:])]
    assert abs(sum(gaps) / len(gaps) - 0.25) < 0.02                # mean gap 1 / rate
    counts = Counter(a.adapter for a in trace)
    assert counts.most_common(1)[0][0] == adapter_name(0)
    assert 1.6 < counts[adapter_name(0)] / counts[adapter_name(1)] < 2.5   # Zipf s=1: 1/k
    assert all(28 <= len(a.prompt) <= 36 and all(10 <= t < 20 for t in a.prompt)
               for a in trace)
    assert make_trace(5, 3, 1.0, 1.0, (2, 3), (0, 9), seed=1)[2].prompt == \
        make_trace(5, 3, 1.0, 1.0, (2, 3), (0, 9), seed=1)[2].prompt


def test_percentile_matches_linear_interpolation():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 95) == 95.0
    assert percentile([7.0], 95) == 7.0


def test_summarise_counts_latency_from_arrival_and_throughput_over_the_replay():
    trace = make_trace(2, 1, 1.0, 1.0, (2, 2), (0, 5), seed=0)
    start = 100.0
    finished = {0: start + trace[0].at + 1.0, 1: start + trace[1].at + 3.0}
    row = summarise("x", 1, trace, finished, start, {0: [1] * 16, 1: [2] * 16})
    assert row["p50_s"] == 2.0
    assert row["tokens_per_s"] == pytest.approx(32 / (trace[1].at + 3.0))


def test_goal_figures_are_ratios_of_the_contenders_at_the_same_count():
    rows = [{"contender": "lorakit", "adapters": 100, "tokens_per_s": 30.0, "p95_s": 4.0},
            {"contender": "peft-naive", "adapters": 100, "tokens_per_s": 5.0, "p95_s": 90.0},
            {"contender": "peft-static", "adapters": 100, "tokens_per_s": 25.0, "p95_s": 8.0},
            {"contender": "lorakit", "adapters": 1000, "tokens_per_s": 28.0, "p95_s": 4.0},
            {"contender": "lorakit-cap", "adapters": 1000, "tokens_per_s": 21.0, "p95_s": 5.0}]
    figures = goal_figures(rows, at=100, cap_at=1000)
    assert figures == {"speedup_vs_peft_naive_100": 6.0, "throughput_vs_peft_static_100": 1.2,
                       "p95_vs_peft_static_100": 0.5,
                       "capped_vs_resident_throughput_1000": 0.75}
    rows += [{"contender": "lorakit-sat", "adapters": 100, "tokens_per_s": 40.0, "p95_s": 9.0},
             {"contender": "peft-static-sat", "adapters": 100, "tokens_per_s": 32.0,
              "p95_s": 12.0}]
    figures = goal_figures(rows, at=100, cap_at=1000)
    assert figures["speedup_vs_peft_naive_100"] == 8.0          # capacity against capacity
    assert figures["throughput_vs_peft_static_saturated_100"] == 1.25
    assert figures["p95_vs_peft_static_100"] == 0.5              # latency: the Poisson trace


def test_written_adapters_are_rank_8_lorakit_files_the_pool_serves(tmp_path):
    transformers = pytest.importorskip("transformers")
    from lorakit import read_adapter
    from lorakit.serving import AdapterPool

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(config).eval()
    nbytes = write_adapters(model, tmp_path, 3, seed=0)
    meta, tensors = read_adapter(tmp_path / "a0002.safetensors")
    assert meta["config"]["rank"] == 8 and meta["name"] == "a0002"
    assert nbytes == sum(t.numel() * 4 for t in tensors.values())
    assert sorted(meta["kinds"]) == [f"model.layers.{i}.self_attn.{p}" for i in range(2)
                                     for p in ("q_proj", "v_proj")]
    pool = AdapterPool(model, tmp_path)
    assert pool.names == ["a0000", "a0001", "a0002"] and pool.rank == 8
    pool.close()
    assert not any("LoRALayer" in type(m).__name__ for m in model.modules())


@pytest.mark.slow
def test_quick_suite_writes_results_report_and_plot(tmp_path):
    from lorakit.reports.bench import run_suite

    result = run_suite("serving", tmp_path, quick=True)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["suite"] == "serving" and (tmp_path / "serving.png").is_file()
    assert (tmp_path / "report.md").is_file()
    figures = result["figures"]
    for key in ("lorakit_10_tokens_per_s", "peft-naive_10_p95_s", "peft-static_10_tokens_per_s",
                "lorakit-cap_100_loads_per_s", "speedup_vs_peft_naive_10",
                "capped_vs_resident_throughput_100", "idle_adapter_host_bytes_100"):
        assert key in figures and figures[key] > 0, key
    assert figures["greedy_agreement_capped_vs_resident_100"] == 1.0
