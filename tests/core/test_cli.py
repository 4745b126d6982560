"""The `lorakit` console script, run as a user runs it."""
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lorakit

TOY = Path(__file__).with_name("toy_plugin_dist")
LORAKIT = str(Path(sys.executable).with_name("lorakit"))


def lorakit_cli(*args, cwd=None, toy=True, timeout=300):
    env = dict(os.environ)
    if toy:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TOY), env.get("PYTHONPATH")]))
    return subprocess.run([LORAKIT, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def test_plugins_lists_a_third_party_plugin_registered_by_entry_point():
    out = lorakit_cli("plugins").stdout
    assert "toy" in out and "a third-party toy plugin" in out
    assert "toy" not in lorakit_cli("plugins", toy=False).stdout.split()


def test_plugin_fit_help_documents_every_option():
    out = lorakit_cli("toy", "fit", "--help").stdout
    for option in ("--model.width", "--model.rank", "--model.lr", "--data.n",
                   "--data.batch_size", "--trainer.max_epochs"):
        assert option in out
    assert "hidden width of the frozen MLP" in out


def test_plugin_fit_runs_lightning_cli_with_the_plugins_default_config(tmp_path):
    proc = lorakit_cli("toy", "fit", "--trainer.default_root_dir", tmp_path, "--model.rank", 3,
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta, _ = lorakit.read_adapter(tmp_path / "adapter.safetensors")
    assert meta["config"]["rank"] == 3 and meta["extra"] == {"plugin": "toy"}
    assert f"written to {tmp_path / 'adapter.safetensors'}" in proc.stdout + proc.stderr


def test_plugin_fit_prints_lorakits_lines_and_real_warnings_but_no_adverts_or_library_noise(
        tmp_path):
    """A real plugin (lora-distill, its embedded teacher, 3 steps) through the console script.
    Its default logger and checkpointing draw Lightning's tips, its tensorboardX note and
    torch's LeafSpec deprecation; log_every_n_steps=25 over 2 batches is a real warning
    about this command line, which must still show."""
    proc = lorakit_cli("lora-distill", "fit", "--threads", 1, "--data.source=labels",
                       "--data.batch_size=8", "--data.epoch_size=16", "--data.val_size=8",
                       "--model.sample_steps=2", "--model.x0_steps=2", "--trainer.max_steps=3",
                       "--trainer.limit_val_batches=1", f"--model.output_dir={tmp_path}",
                       f"--trainer.default_root_dir={tmp_path}", cwd=tmp_path, toy=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    for advert in ("Tip", "litlogger", "litmodels", "tensorboardX"):
        assert advert not in out
    assert not re.search(r"deprecat|DeprecationWarning|FutureWarning", out, re.IGNORECASE)
    assert re.search(r"^lorakit: [\d,]+ trainable of [\d,]+ parameters", out, re.MULTILINE)
    assert "smaller than the logging interval Trainer(log_every_n_steps=25)" in out
    library_warnings = re.findall(r"site-packages/\S+:\d+: .*", out)
    assert len(library_warnings) == 1, library_warnings  # the logging-interval one above
    assert "step 3/3" in proc.stdout  # StepProgressBar, installed by default


def test_quiet_third_party_matches_the_library_that_warns_not_the_message_alone():
    from lorakit.quiet import quiet_third_party

    message = "`torch.cuda.amp.autocast(args...)` is deprecated. Please use torch.amp.autocast"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        for module in ("mini_dust3r.model", "my_training_script"):
            warnings.warn_explicit(message, FutureWarning, f"{module}.py", 1, module=module)
    assert [w.filename for w in caught] == ["my_training_script.py"]


def test_demo_index_shows_rounded_headlines_with_goals_plots_and_html_reports(tmp_path):
    import re

    proc = lorakit_cli("demo", "toy", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (tmp_path / "index.html").read_text()
    # the headline table: 3 significant digits, the unit, the baseline and the goal
    rows = re.findall(r"<tr>\s*(.*?)\s*</tr>", page, re.S)
    cells = [re.findall(r"<t[hd]>(.*?)</t[hd]>", r) for r in rows]
    assert ["measure", "measured", "baseline", "paper's claim / issue's goal"] in cells
    assert ["toy metric after training", "0.986", "0.501 (untrained)",
            "the issue's goal: at least 0.9"] in cells
    assert ["training time", "12.3 s", "", ""] in cells
    assert "0.98585" not in page
    # links go to HTML reports that exist; plots are inline images that exist
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert "toy/report.html" in hrefs
    assert all((tmp_path / h).is_file() for h in hrefs)
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images == ["toy/toy_curve.png"] and (tmp_path / images[0]).is_file()
    # the plugin's report itself reads in a browser: HTML tables, the plot inline
    report = (tmp_path / "toy" / "report.html").read_text()
    assert "<table>" in report and '<img src="toy_curve.png"' in report
    assert "| measure |" not in report
    result = json.loads((tmp_path / "toy" / "results.json").read_text())
    assert {"suite", "machine", "figures", "rows", "notes", "headline"} <= set(result)
    assert result["figures"]["toy_metric"] == 0.9858555555555556   # full precision kept


def test_demo_jobs_run_each_demo_in_its_own_process_with_its_log(tmp_path):
    proc = lorakit_cli("demo", "toy", "--out", tmp_path, "--jobs", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"== toy: started (log: {tmp_path / 'toy' / 'demo.log'})" in proc.stdout
    assert re.search(r"== toy: ok in \d+ s", proc.stdout)
    assert '"toy_metric": 0.98585' in (tmp_path / "toy" / "demo.log").read_text()
    assert 'href="toy/report.html"' in (tmp_path / "index.html").read_text()


def test_bench_writes_results_json_of_the_common_shape(tmp_path):
    proc = lorakit_cli("bench", "--suite", "toy", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result) == {"suite", "machine", "figures", "rows", "notes"}
    assert result["figures"] == {"speedup": 2.0}
    assert {"cpu", "cores", "torch"} <= set(result["machine"])
    assert "| speedup | 2 |" in (tmp_path / "report.md").read_text()
    assert "<td>speedup</td>" in (tmp_path / "report.html").read_text()


def test_core_benchmark_quick_run_reports_the_promised_ratios(tmp_path):
    proc = lorakit_cli("bench", "--suite", "core", "--quick", "--out", tmp_path, toy=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "results.json").read_text())
    for figure in ("step_time_vs_peft", "peak_memory_vs_peft", "merged_inference_vs_base"):
        assert 0.1 < result["figures"][figure] < 10
    assert [r["contender"] for r in result["rows"][:3]] == ["lorakit", "peft", "full"]
    assert result["rows"][0]["trainable_params"] < result["rows"][2]["trainable_params"] / 10
    assert (tmp_path / "core_benchmark.png").stat().st_size > 1000
    # mixed-adapter batches: lorakit and PEFT compute the same function, every contender
    # and adapter count has its row, and the plot is there
    assert result["figures"]["mixed_max_abs_diff_vs_peft"] <= 1e-4
    mixed = {(r["contender"], r.get("distinct_adapters")) for r in result["rows"]}
    assert {(c, k) for c in ("lorakit routed", "PEFT mixed batch", "one forward per adapter")
            for k in (1, 8, 64)} <= mixed
    assert 0 < result["figures"]["idle_adapters_tensor_mb"] < 10
    assert (tmp_path / "mixed_batches.png").stat().st_size > 1000


@pytest.fixture
def adapter_file(tmp_path, tiny_bert):
    model = tiny_bert()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=4, method="s2lora",
                                                        targets=["*.query", "*.value"]))
    with torch.no_grad():
        for v in adapters.variants().values():
            v.lora_lambda[:2] = 0.0
            v.basis.lora_B.normal_()
    adapters.save(tmp_path / "a.safetensors")
    adapters.detach()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "base.safetensors"))
    return tmp_path / "a.safetensors"


def test_adapter_inspect_shows_sparsity_and_effective_rank(adapter_file):
    proc = lorakit_cli("adapter", "inspect", adapter_file, "--json", toy=False)
    info = json.loads(proc.stdout)
    assert info["method"] == "s2lora"
    assert info["modules"][0]["effective_rank"] == 2
    assert info["modules"][0]["sparsity"] == 0.5
    table = lorakit_cli("adapter", "inspect", adapter_file, toy=False).stdout
    assert "effective rank" in table and "bert.encoder.layer.0.attention.self.query" in table
    assert info["modules"][0]["kind"] == "linear" and "linear" in table


def test_adapter_merge_folds_the_update_into_base_weights(adapter_file, tiny_bert):
    merged = adapter_file.with_name("merged.safetensors")
    proc = lorakit_cli("adapter", "merge", adapter_file, adapter_file.with_name("base.safetensors"),
                       merged, toy=False)
    assert proc.returncode == 0, proc.stderr
    assert "merged 4 matrices" in proc.stdout
    ids = torch.randint(0, 60, (2, 9))
    adapted = tiny_bert()
    lorakit.load_adapter(adapted, adapter_file)
    from safetensors.torch import load_file
    plain = tiny_bert()
    plain.load_state_dict(load_file(str(merged)))
    assert torch.allclose(plain(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-5)


def test_adapter_export_peft_writes_the_peft_layout(adapter_file, tmp_path):
    proc = lorakit_cli("adapter", "export-peft", adapter_file, tmp_path / "peft", toy=False)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (tmp_path / "peft").iterdir()} == {"adapter_config.json",
                                                               "adapter_model.safetensors"}


def test_bad_input_gets_one_line_and_exit_status_2(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    proc = lorakit_cli("adapter", "inspect", bad, toy=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("lorakit: error:") and "truncated or corrupt" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = lorakit_cli("no-such-plugin", "fit", toy=False)
    assert proc.returncode == 2 and "no plugin named 'no-such-plugin'" in proc.stderr


def test_demo_starts_the_longest_demo_first_and_indexes_in_the_plugins_order(
        tmp_path, monkeypatch):
    from argparse import Namespace

    from lorakit.cli import demo as demo_cli
    from lorakit.reports import index as index_module

    todo = [demo_cli.Job("short", "short", [], 10.0), demo_cli.Job("long", "long", [], 500.0),
            demo_cli.Job("middle", "middle", [], 90.0)]
    started, indexed = [], []
    monkeypatch.setattr(demo_cli, "jobs", lambda args: (todo, []))
    monkeypatch.setattr(demo_cli, "run_job", lambda job, out, to_log: started.append(
        job.name) or {"name": job.name, "status": "ok", "folder": job.folder, "seconds": 1})
    monkeypatch.setattr(index_module, "write_index",
                        lambda out, entries: indexed.extend(e["name"] for e in entries))
    assert demo_cli.cmd_demo(Namespace(out=tmp_path, jobs=1)) == 0
    assert started == ["long", "middle", "short"]
    assert indexed == ["short", "long", "middle"]
