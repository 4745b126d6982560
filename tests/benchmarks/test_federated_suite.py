"""The `federated` suite's quick run writes its figures (slow: four Flower simulations)."""
import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")


@pytest.mark.slow
def test_federated_suite_quick(tmp_path):
    from lorakit.benchmarks.suites.federated import run
    result = run(tmp_path, quick=True)
    f = result["figures"]
    assert f["ffa.mean_aggregation_error"] < 1e-6 and f["fedsb.mean_aggregation_error"] < 1e-6
    assert f["fedavg.mean_aggregation_error"] > 0
    assert f["ffa.bytes_vs_fedavg"] == pytest.approx(0.5, rel=0.1)
    assert (tmp_path / "accuracy.png").exists()


def _fake_measure(calls):
    """`measure`'s shape without Flower: accuracy 0.5 + seed / 10, plus the lr for Fed-SB
    and minus it for the others (so Fed-SB's sweep picks the larger lr, the others the
    smaller)."""
    def measure(strategies, seed=0, **overrides):
        calls.append({"seed": seed, "strategies": list(strategies), **overrides})
        dp = {"epsilon": 8.0} if overrides.get("dp.enabled") else {}
        results, figures = {}, {}
        for n in strategies:
            lr = overrides["lr"] if n == "fedsb" else -overrides["lr"]
            last = {"round": 1, "accuracy": 0.5 + seed / 10 + lr, "error": 0.1,
                    "bytes_per_client": 64, "clients": 2, **dp}
            results[n] = {"history": [{"round": 0, "accuracy": 0.5}, last], "wall_s": 1.0}
            figures.update({f"{n}.final_accuracy": last["accuracy"], f"{n}.wall_s": 1.0,
                            f"{n}.bytes_per_client": 64, f"{n}.mean_aggregation_error": 0.1})
            figures.update({f"{n}.epsilon": 8.0} if dp else {})
        return results, figures
    return measure


def test_the_suite_chooses_each_lr_on_validation_and_resumes(tmp_path, monkeypatch):
    from lorakit.benchmarks.suites import federated as federated_suite
    calls = []
    monkeypatch.setattr(federated_suite, "measure", _fake_measure(calls))
    monkeypatch.setattr(federated_suite, "noise_over_signal", lambda cfg, sent: 2.0)
    first = federated_suite.run(tmp_path, quick=True)
    sweep, final = calls[:2], calls[2:]
    assert [c["lr"] for c in sweep] == [1e-2, 3e-2]         # the quick sweep
    assert all(c["eval-split"] == "val" and c["strategies"] == ["fedavg", "ffa", "fair", "fedsb"]
               and not c.get("dp.enabled") for c in sweep)
    ablation = final.pop(4)             # after seed 0's plain runs: Fed-SB from a random init
    assert ablation["fedsb-init"] == "random" and ablation["lr"] == 3e-2
    assert len(final) == 8 and all("eval-split" not in c for c in final)  # the test split
    lr = {c["strategies"][0]: c["lr"] for c in final}
    assert lr == {"fedavg": 1e-2, "ffa": 1e-2, "fair": 1e-2, "fedsb": 3e-2}
    assert first["figures"]["fedsb.lr"] == 3e-2
    assert first["figures"]["fedavg.val_accuracy@lr=0.03"] == pytest.approx(0.5 - 3e-2)
    assert [c.get("dp.enabled", False) for c in final] == [False] * 4 + [True] * 4
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == sorted(
        ["sweep-lr0.01.json", "sweep-lr0.03.json"]
        + [f"seed0-{arm}-{n}.json" for arm in ("plain", "dp")
           for n in ("fedavg", "ffa", "fair", "fedsb")] + ["seed0-plain-fedsb-random.json"])
    # the same command again: nothing measured, the same figures
    assert federated_suite.run(tmp_path, quick=True)["figures"] == first["figures"]
    assert len(calls) == 11
    # a session stopped before the last measurement: only the missing one runs
    (runs / "seed0-dp-fedsb.json").unlink()
    federated_suite.run(tmp_path, quick=True)
    assert len(calls) == 12 and calls[11]["dp.enabled"] is True and calls[11]["lr"] == 3e-2
    # other settings (another base) are never taken for these: measured again, overwritten
    federated_suite.run(tmp_path, quick=True, base="minilm")
    assert len(calls) == 23 and all(c["base"] == "minilm" for c in calls[12:])


def test_noise_over_signal_is_one_steps_noise_norm_over_the_clipping_bound():
    from lorakit.benchmarks.suites.federated import DP, noise_over_signal
    from lorakit.plugins.federated.privacy import DPConfig, solve_noise
    cfg = {"clients": 4, "rounds": 5, "local-steps": 10, "base": "tiny", **DP}
    q = 16 / 64                      # one synthetic domain per client: 64 examples
    sigma = solve_noise(DPConfig(True, 1.0, 1.0, 1e-5, 8.0), q, 50)
    got = noise_over_signal({**cfg, "strategy": "fedavg"}, 4 * 100)
    assert got == pytest.approx(sigma * 10 / 16)
    # Fed-SB's init round adds its DP-SGD steps: more noise for the same budget
    assert noise_over_signal({**cfg, "strategy": "fedsb"}, 4 * 100) > got
