"""The lora3d suite: gate first, then one `fit_scene` (the `lorakit lora3d fit` path) per
scene and variant, scored before and after; on a tiny random DUSt3R, 2 steps."""
import argparse
import json
import math

import pytest
import torch

pytest.importorskip("mini_dust3r")

from lorakit.benchmarks.suites import lora3d as S  # noqa: E402
from lorakit.domains.geometry.dust3r import build_model, save_checkpoint  # noqa: E402
from lorakit.plugins.lora3d import evaluate, fit  # noqa: E402
from lorakit.reports.bench import write_suite_run  # noqa: E402

from ..plugins.lora3d.helpers import MICRO  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("micro") / "micro.pth"
    save_checkpoint(build_model(MICRO), MICRO, path)
    return path


def test_quick_suite_calibrates_every_variant_through_fit_scene_and_scores_it(
        checkpoint, tmp_path, monkeypatch):
    calls = []
    real = fit.fit_scene

    def recorded(images, **kwargs):
        calls.append(kwargs)
        return real(images, **kwargs)
    monkeypatch.setattr(fit, "fit_scene", recorded)
    args = argparse.Namespace(out=str(tmp_path), threads=1)
    result = write_suite_run("lora3d", args, lambda: S.run(
        tmp_path, quick=True, checkpoint=checkpoint, force=True, n_scenes=1, max_steps=2))

    # 2 shifts x 1 scene x 5 variants, each one fit_scene with its variant's settings
    assert len(calls) == len(result["rows"]) == 10
    by_variant = {}
    for kw in calls:
        by_variant.setdefault(str(kw["out_dir"]).rsplit("/", 1)[-1], kw)
    assert by_variant["no_reweight"]["reweight_rounds"] == 0
    assert by_variant["all_points"]["all_points"] is True
    assert by_variant["no_conf_loss"]["conf_loss"] is False
    assert by_variant["oracle"]["labels"] == "oracle"
    assert by_variant["oracle"]["gt_pts3d"].shape[-1] == 3
    assert "gt_pts3d" not in by_variant["full"] and all(kw["max_steps"] == 2 for kw in calls)

    f = result["figures"]
    assert next(iter(f)).startswith("gate.")          # the gate comes first
    assert f["gate.gate_partner_passed"] in (0.0, 1.0)
    for shift in S.QUICK_SHIFTS:
        for v in S.VARIANTS:
            for m in S.HEADLINE:
                assert math.isfinite(f[f"{shift}.{v}.{m}_change"])
        assert (tmp_path / f"{shift}.png").is_file()
        assert f"goal_{shift}" in f
    for goal in ("goal_full_ahead", "goal_time", "goal_adapter"):
        assert f[goal] in (0.0, 1.0)
    assert 0 < f["adapter_bytes"] < S.MAX_ADAPTER_BYTES
    row = result["rows"][0]
    assert {f"{m}_{w}" for m in S.METRICS for w in ("before", "after")} <= set(row)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["suite"] == "lora3d" and "--force" in saved["notes"]
    assert (tmp_path / "report.md").is_file()


def test_a_failed_gate_skips_calibration_unless_forced(checkpoint, tmp_path, monkeypatch):
    failed = {"gate_partner_passed": False, "gate_alignment_passed": True, "n_scenes": 2,
              "align_iters": 30, "partner_depth_ratio": 1.0, "partner_rot_ratio": 1.0,
              "alignment_ratio": 0.9, "pairwise_depth": "mean over every partner"}
    monkeypatch.setattr(evaluate, "gate", lambda *a, **k: dict(failed))
    monkeypatch.setattr(fit, "fit_scene", lambda *a, **k: pytest.fail("calibrated"))
    result = S.run(tmp_path, quick=True, checkpoint=checkpoint)
    assert result["rows"] == [] and result["figures"]["calibration_skipped"] == 1.0
    assert result["figures"]["gate.gate_partner_passed"] == 0.0
    assert "skipped" in result["notes"] and "--force" in result["notes"]
