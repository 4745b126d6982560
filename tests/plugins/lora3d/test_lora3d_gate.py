"""The gate tests and the extra scores (δ<1.25, focal error), on a tiny random DUSt3R."""
import json
import math
import runpy
import sys

import pytest
import torch

pytest.importorskip("mini_dust3r")

from lorakit.domains.geometry.dust3r import build_model, save_checkpoint  # noqa: E402
from lorakit.plugins.lora3d import evaluate as E  # noqa: E402

from .helpers import MICRO  # noqa: E402

KEYS = ("pairwise_depth_absrel", "pairwise_depth_absrel_first", "pairwise_rot_err_deg",
        "unrelated_depth_absrel", "unrelated_rot_err_deg", "aligned_depth_absrel",
        "aligned_pointmap_err", "aligned_focal_err", "partner_depth_ratio", "partner_rot_ratio",
        "alignment_ratio")


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    return build_model(MICRO).eval()


def test_gate_on_a_random_model_returns_finite_numbers_and_both_verdicts(micro):
    out = E.gate(micro, n_scenes=1, niter=5, backend="native")
    for k in KEYS:
        assert math.isfinite(out[k]), k
    assert isinstance(out["gate_partner_passed"], bool)
    assert isinstance(out["gate_alignment_passed"], bool)
    assert out["alignment_ratio"] == pytest.approx(
        out["aligned_depth_absrel"] / out["pairwise_depth_absrel"])
    assert out["seeds"] == [E.GATE_SEEDS[0]] and len(out["per_scene"]) == 1


def test_gate_partner_test_sees_a_model_that_ignores_its_partner(micro):
    """A model whose view-1 output does not depend on view 2 is no worse with an unrelated
    partner: the partner gate must fail for it."""
    views = E.target_scene("clean", E.GATE_SEEDS[0], 4, 16)
    other = E.target_scene("clean", E.UNRELATED_SEEDS[0], 4, 16)
    blind = E.gate_scene(_Blind(micro), views, other, niter=5, backend="native")
    assert blind["unrelated_depth_absrel"] == pytest.approx(blind["pairwise_depth_absrel"],
                                                            rel=1e-5)


class _Blind(torch.nn.Module):
    """The micro model, fed its first view twice: the partner's content never reaches it."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.patch_embed = model.patch_embed

    def forward(self, view1, view2):
        return self.model(view1, {**view2, "img": view1["img"]})


def test_delta1_and_focal_error_on_known_values():
    from lorakit.domains.geometry.metrics import depth_delta1, focal_error
    gt = torch.full((1, 4, 4), 2.0)
    pred = gt.clone()
    pred[0, 0, :2] = 2.0 * 1.5          # 2 of 16 pixels off by 1.5x (median scale stays 1)
    assert depth_delta1(pred, gt) == pytest.approx(14 / 16)
    K = torch.eye(3).repeat(2, 1, 1) * 50
    assert focal_error(torch.tensor([55.0, 45.0]), K) == pytest.approx(0.1)


def test_gate_command_line_prints_the_json(micro, tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "micro.pth"
    save_checkpoint(micro, MICRO, ckpt)
    out = tmp_path / "gate.json"
    monkeypatch.setattr(sys, "argv", ["evaluate", "--gate", str(ckpt), "--scenes", "1",
                                      "--iters", "5", "--out", str(out)])
    runpy.run_module("lorakit.plugins.lora3d.evaluate", run_name="__main__")
    card = json.loads(out.read_text())
    assert set(KEYS) <= set(card) and card["n_scenes"] == 1 and card["align_iters"] == 5
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("\n{") + 1:]) == card
