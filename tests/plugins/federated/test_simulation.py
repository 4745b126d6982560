"""End to end on Flower's simulation engine (Ray): two clients, two rounds, per strategy."""
import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from lorakit.plugins.federated.run import simulate  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fedavg", "fedsb"])
def test_two_rounds_in_simulation(strategy):
    history = simulate({"strategy": strategy, "clients": 2, "rounds": 2, "local-steps": 2})
    assert [r["round"] for r in history] == [0, 1, 2]
    assert all(r["clients"] == 2 and not r["rejected"] for r in history[1:])
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in history)
    if strategy == "fedsb":
        assert all(r["error"] < 1e-6 for r in history[1:])
        assert history[0]["init_clients"] == 2        # the init round, on the engine
    else:
        assert history[-1]["error"] > 0       # FedAvg-LoRA's inexactness, measured
