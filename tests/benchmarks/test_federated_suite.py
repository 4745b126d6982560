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


def _fake_measure(calls):
    """`measure`'s shape without Flower: every strategy at accuracy 0.5 + seed / 10."""
    def measure(strategies, seed=0, **overrides):
        calls.append({"seed": seed, **overrides})
        dp = {"epsilon": 8.0} if overrides.get("dp.enabled") else {}
        last = {"round": 1, "accuracy": 0.5 + seed / 10, "error": 0.1, "bytes_per_client": 64,
                "clients": 2, **dp}
        results = {n: {"history": [{"round": 0, "accuracy": 0.5}, last], "wall_s": 1.0}
                   for n in strategies}
        figures = {}
        for n in strategies:
            figures.update({f"{n}.final_accuracy": last["accuracy"], f"{n}.wall_s": 1.0,
                            f"{n}.bytes_per_client": 64, f"{n}.mean_aggregation_error": 0.1})
            figures.update({f"{n}.epsilon": 8.0} if dp else {})
        return results, figures
    return measure


def test_the_suite_resumes_from_its_finished_measurements(tmp_path, monkeypatch):
    from lorakit.benchmarks import federated_suite
    calls = []
    monkeypatch.setattr(federated_suite, "measure", _fake_measure(calls))
    first = federated_suite.run(tmp_path, quick=True)
    assert len(calls) == 2 and calls[1]["dp.enabled"] is True     # seed 0, without and with DP
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["seed0-dp.json", "seed0-plain.json"]
    # the same command again: nothing measured, the same figures
    assert federated_suite.run(tmp_path, quick=True)["figures"] == first["figures"]
    assert len(calls) == 2
    # a session stopped after the first measurement: only the missing one runs
    (runs / "seed0-dp.json").unlink()
    federated_suite.run(tmp_path, quick=True)
    assert len(calls) == 3 and calls[2]["dp.enabled"] is True
    # other settings (another base) are never taken for these: measured again, overwritten
    federated_suite.run(tmp_path, quick=True, base="minilm")
    assert len(calls) == 5 and all(c["base"] == "minilm" for c in calls[3:])
