"""The `federated` suite's quick run writes its figures (slow: four Flower simulations)."""
import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")


@pytest.mark.slow
def test_federated_suite_quick(tmp_path):
    from lorakit.benchmarks.federated_suite import run
    result = run(tmp_path, quick=True)
    f = result["figures"]
    assert f["ffa.mean_aggregation_error"] < 1e-6 and f["fedsb.mean_aggregation_error"] < 1e-6
    assert f["fedavg.mean_aggregation_error"] > 0
    assert f["ffa.bytes_vs_fedavg"] == pytest.approx(0.5, rel=0.1)
    assert (tmp_path / "accuracy.png").exists()
