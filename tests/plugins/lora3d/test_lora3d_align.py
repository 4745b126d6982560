"""lora3d without DUSt3R: global alignment, its backends, re-weighting, pseudo-labels, the loss."""
import math

import pytest
import torch

from lorakit.domains.geometry.metrics import relative_pose_errors
from lorakit.domains.geometry.transforms import to_frame
from lorakit.errors import LoraKitError
from lorakit.plugins.lora3d import align as A
from lorakit.plugins.lora3d import aligners
from lorakit.plugins.lora3d import pairs as P
from lorakit.plugins.lora3d import reweight as R
from lorakit.plugins.lora3d.loss import confidence_loss

from .helpers import exact_predictions


# --- alignment --------------------------------------------------------------------------
def test_native_aligner_recovers_ground_truth_poses_from_exact_pointmaps():
    views, preds = exact_predictions()
    result, _ = A.global_align(preds, niter=30, backend="native")
    errs = relative_pose_errors(result.poses, views.poses)
    assert errs["rot_err_deg"] < 0.5 and errs["trans_dir_err_deg"] < 1.0
    assert torch.allclose(result.focals, views.K[:, 0, 0], rtol=0.02)
    assert result.init == "mst" and result.loss < 0.05


@pytest.mark.skipif(not A.upstream_available(),
                    reason="mini_dust3r.cloud_opt does not import here (it needs torchvision)")
def test_upstream_point_cloud_optimizer_recovers_ground_truth_poses():
    views, preds = exact_predictions()
    result, _ = A.global_align(preds, niter=100, backend="upstream")
    errs = relative_pose_errors(result.poses, views.poses)
    assert errs["rot_err_deg"] < 2 and errs["trans_dir_err_deg"] < 3


def test_auto_backend_falls_back_to_native_on_import_error_only(monkeypatch):
    real = A.importlib.import_module

    def fake(error):
        def imp(name, *a):
            if name == "mini_dust3r.cloud_opt":
                raise error
            return real(name, *a)
        return imp
    _, preds = exact_predictions(n=3, size=12)
    monkeypatch.setattr(A.importlib, "import_module", fake(ImportError("no torchvision")))
    result, aligner = A.global_align(preds, niter=2, backend="auto")
    assert result.backend == "native" and isinstance(aligner, aligners.NativeAligner)
    with pytest.raises(LoraKitError, match="no torchvision"):
        A.global_align(preds, niter=2, backend="upstream")
    monkeypatch.setattr(A.importlib, "import_module",
                        fake(RuntimeError("operator torchvision::nms does not exist")))
    with pytest.raises(RuntimeError, match="nms"):   # a broken install is not hidden
        A.global_align(preds, niter=2, backend="auto")


def test_both_backends_implement_the_aligner_protocol():
    members = [m for m in vars(aligners.Aligner) if not m.startswith("_")]
    assert set(members) >= {"initialise", "set_weights", "parameters", "loss", "residuals",
                            "geometry"}
    for name, cls in aligners.BACKENDS.items():
        assert cls.name == name
        assert all(callable(getattr(cls, m)) for m in members if m not in ("name", "notes"))


@pytest.fixture
def mst_fails(monkeypatch):
    """The native aligner's MST initialisation fails as it does on a NaN focal."""
    def boom(self):
        raise ValueError("NaN focal")
    monkeypatch.setattr(aligners.NativeAligner, "init_mst", boom)
    return exact_predictions(n=3, size=12)[1]


def test_mst_failure_falls_back_to_random_init_and_says_so(mst_fails):
    with pytest.warns(UserWarning, match="fell back"):
        result, _ = A.global_align(mst_fails, niter=5, backend="native")
    assert result.init.startswith("random") and "fell back" in result.notes[0]


def test_warm_started_rounds_keep_the_initialisation_notes(mst_fails):
    with pytest.warns(UserWarning, match="fell back"):
        targets = A.robust_alignment(mst_fails, rounds=1, niter=4, backend="native")
    assert "fell back" in targets.alignment.notes[0]
    assert targets.rounds[0]["backend"] == targets.alignment.backend == "native"


UPSTREAM = pytest.mark.skipif(not A.upstream_available(),
                              reason="mini_dust3r.cloud_opt does not import here")


@pytest.mark.parametrize("backend", ["native", pytest.param("upstream", marks=UPSTREAM)])
def test_reweighting_lowers_the_weight_of_injected_outliers(backend):
    _, preds = exact_predictions(n=3, size=20)
    bad = torch.zeros(20, 20, dtype=torch.bool)
    bad[4:10, 4:10] = True
    g = torch.Generator().manual_seed(0)
    preds.pts_j[0][bad] += torch.randn(int(bad.sum()), 3, generator=g) * 2.0
    targets = A.robust_alignment(preds, rounds=2, niter=60, niter_round=30, backend=backend)
    wi, wj, ci, cj = R.reweight(preds, targets.alignment)
    assert wj[0][bad].mean() < 0.2 * wj[0][~bad].mean()
    assert cj[0][bad].mean() < 0.5 * cj[0][~bad].mean()
    # the raw confidence could not tell them apart; the other edges keep the image's
    # confidence (the max over edges, as DUSt3R's im_conf) where they see it well
    j = preds.edges[0][1]
    raw = targets.confidence_before[j]
    assert torch.allclose(raw, torch.full_like(raw, 3.0))
    assert torch.isfinite(targets.confidence_after).all()


def test_robust_factor_is_the_closed_form_weight_and_scale_free():
    r = torch.tensor([[0.0, 0.5, 1.0, 3.0, 4.0]])
    ki, kj = R.robust_factor(r, r)               # mu = the median residual = 1.0
    assert torch.allclose(ki, torch.tensor([[1.0, 4 / 9, 1 / 4, 1 / 16, 1 / 25]]))
    assert torch.equal(ki, kj)
    assert ki[0, 0] == 1.0 and (ki[0, 1:] < ki[0, :-1]).all()
    k10, _ = R.robust_factor(10 * r, 10 * r)
    assert torch.allclose(k10, ki)


def test_residuals_are_relative_to_the_depth_of_the_point():
    views, preds = exact_predictions(n=3, size=20)
    e = 0
    i, j = preds.edges[e]
    d = to_frame(views.poses[i], views.pts3d[j])[..., 2]
    near, far = divmod(int(d.argmin()), 20), divmod(int(d.argmax()), 20)
    assert d[far] > 3 * d[near]                 # an absolute residual would be 3x larger
    for (y, x) in (near, far):                   # the same 10 % error, relative to depth
        preds.pts_j[e, y, x] *= 1.1
    result, _ = A.global_align(preds, niter=60, backend="native")
    r = result.residual_j[e]
    assert 0.5 < float(r[far] / r[near]) < 2.0
    assert float(r[near]) > 5 * float(r.median())


def test_image_confidence_mean_and_max_over_the_edges_that_see_a_pixel():
    edges = [(0, 1), (1, 0)]
    ci = torch.tensor([1.0, 3.0]).view(2, 1, 1).expand(2, 2, 2)
    cj = torch.tensor([5.0, 7.0]).view(2, 1, 1).expand(2, 2, 2)
    mean = R.image_confidence(edges, ci, cj, 2, "mean")
    assert torch.allclose(mean[0], torch.full((2, 2), 4.0))    # (1 + 7) / 2
    assert torch.allclose(mean[1], torch.full((2, 2), 4.0))    # (5 + 3) / 2
    mx = R.image_confidence(edges, ci, cj, 2, "max")
    assert torch.allclose(mx[0], torch.full((2, 2), 7.0))
    with pytest.raises(LoraKitError):
        R.image_confidence(edges, ci, cj, 2, "median")


def test_reweighted_selection_keeps_inliers_that_raw_confidence_would_drop():
    # overconfident outliers: raw confidence ranks them first, alignment residuals do not
    _, preds = exact_predictions(n=4, size=20)
    g = torch.Generator().manual_seed(1)
    bad = torch.zeros(20, 20, dtype=torch.bool)
    bad[2:9, 3:12] = True                        # 63 of 400 pixels of image 1
    for e, (i, j) in enumerate(preds.edges):
        for k, pts, conf in ((i, preds.pts_i, preds.conf_i), (j, preds.pts_j, preds.conf_j)):
            if k == 1:
                pts[e][bad] *= 1 + 0.5 * torch.rand(int(bad.sum()), 1, generator=g)
                conf[e][bad] = 5.0
    raw = A.robust_alignment(preds, rounds=0, niter=80, backend="native", keep_fraction=0.5)
    rew = A.robust_alignment(preds, rounds=2, niter=80, niter_round=40, backend="native",
                             keep_fraction=0.5)
    assert raw.masks[1][bad].all()               # raw confidence keeps every outlier
    assert rew.masks[1][bad].float().mean() < 0.2
    assert rew.confidence_after[1][bad].mean() < rew.confidence_after[1][~bad].mean()


def test_pseudo_label_selection():
    conf = torch.arange(2 * 10 * 10, dtype=torch.float32).reshape(2, 10, 10)
    m = R.select_pseudo_labels(conf, keep_fraction=0.3)
    assert m.shape == conf.shape and m[0].sum() == 30 and m[1].sum() == 30
    assert conf[0][m[0]].min() > conf[0][~m[0]].max()
    m = R.select_pseudo_labels(conf, threshold=150.0)
    assert m[0].sum() == 16 and m[1].sum() == 49          # min_pixels guard for image 0
    with pytest.raises(LoraKitError):
        R.select_pseudo_labels(conf, keep_fraction=0.0)


def test_alignment_divergence_is_detected_with_the_stage():
    _, preds = exact_predictions(n=3, size=12)
    preds.pts_i[1, 3, 3, 0] = float("nan")
    with pytest.raises(P.AlignmentError, match="pairwise inference") as err:
        A.global_align(preds, niter=5, backend="native")
    assert err.value.stage == "pairwise inference"
    _, preds = exact_predictions(n=3, size=12)
    with pytest.raises(P.AlignmentError, match="alignment round 0"):
        A.robust_alignment(preds, rounds=0, niter=5, lr=float("inf"), backend="native")


# --- the loss ----------------------------------------------------------------------------
def test_confidence_loss_is_scale_invariant_and_confidence_aware():
    gt = [torch.randn(2, 8, 8, 3), torch.randn(2, 8, 8, 3)]
    valid = [torch.ones(2, 8, 8, dtype=torch.bool)] * 2
    conf = [torch.full((2, 8, 8), 2.0)] * 2
    loss, parts = confidence_loss([3 * g for g in gt], conf, gt, valid, alpha=0.2)
    assert float(parts["regr"]) < 1e-5
    assert math.isclose(float(loss), 2 * -0.2 * math.log(2.0), rel_tol=1e-4)
    noisy = [g + 0.3 * torch.randn_like(g) for g in gt]
    low, _ = confidence_loss(noisy, [torch.ones(2, 8, 8)] * 2, gt, valid)
    high, _ = confidence_loss(noisy, [torch.full((2, 8, 8), 5.0)] * 2, gt, valid)
    assert high > low


