"""The lora-distill suite's memory rows train the plugin's own DistillModule through fit."""
import math

import pytest

pytest.importorskip("diffusers")

from lorakit.benchmarks.suites.lora_distill import memory_worker  # noqa: E402
from lorakit.plugins.lora_distill.module import DistillModule  # noqa: E402


def test_memory_rows_run_distill_modules_training_step_lora_adapters_vs_every_weight(
        monkeypatch):
    calls = []
    step = DistillModule.training_step

    def counted(self, batch, batch_idx):
        calls.append(type(self).__name__)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(DistillModule, "training_step", counted)
    lora = memory_worker("lora", "embedded", steps=2, batch=2, threads=1)
    full = memory_worker("full", "embedded", steps=2, batch=2, threads=1)
    assert calls == ["DistillModule"] * 2 + ["FullDistill"] * 2
    assert lora["params"] == full["params"] == 406_305  # the digits teacher + its cond_proj
    assert lora["trainable"] == 34_304  # what `lorakit lora-distill fit` reports
    assert full["trainable"] == full["params"]  # the teacher copy is frozen
    assert math.isfinite(lora["loss"]) and math.isfinite(full["loss"])
