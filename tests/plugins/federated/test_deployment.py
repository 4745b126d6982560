"""Flower's deployment engine on loopback: a SuperLink and SuperNodes as real processes,
started and stopped by lorakit; a SuperNode killed mid-run is dropped and the run ends."""
import json
import subprocess

import psutil
import pytest

pytest.importorskip("flwr")

from lorakit.plugins.federated.config import FederatedConfig, settings  # noqa: E402
from lorakit.plugins.federated.deployment import Loopback, write_app  # noqa: E402


def _ours(port: int) -> list[str]:
    """Command lines of live processes that name this federation's port."""
    out = subprocess.run(["pgrep", "-af", f"127.0.0.1:{port}"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


def test_app_bundle_is_a_flower_app_with_the_run_settings(tmp_path):
    from flwr.cli.config_utils import load_and_validate
    from flwr.common.config import get_fused_config_from_dir

    cfg = settings({"strategy": "ffa", "dp.enabled": True, "dp.delta": 1e-6})
    app = write_app(tmp_path / "app", {**cfg, "history-file": str(tmp_path / "h.json")})
    config, _ = load_and_validate(app / "pyproject.toml")
    assert config["tool"]["flwr"]["app"]["components"]["clientapp"].endswith("client_app:app")
    run_config = get_fused_config_from_dir(app, {})
    assert set(run_config) == set(FederatedConfig())
    assert run_config["strategy"] == "ffa" and run_config["dp.enabled"] is True
    assert run_config["dp.delta"] == 1e-6 and run_config["local-steps"] == FederatedConfig()["local-steps"]


def test_loopback_starts_its_nodes_and_leaves_no_process_behind(tmp_path):
    with Loopback(2, tmp_path) as fed:
        tree = [psutil.Process(p.pid) for p in (fed.link, *fed.nodes)]
        tree += [c for p in list(tree) for c in p.children(recursive=True)]
        assert all(p.is_running() for p in tree)
        assert sum("flower-supernode" in line for line in _ours(fed.port)) == 2
        log = (fed.logs / "superlink.log").read_text()
        assert log.count("Activated node_id") == 2
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)
    assert _ours(fed.port) == []


@pytest.mark.slow
def test_a_node_that_dies_mid_run_is_dropped_and_the_run_finishes(tmp_path):
    cfg = settings({"strategy": "fedavg", "clients": 3, "min-clients": 2, "rounds": 2,
                    "local-steps": 1})
    fed = Loopback(3, tmp_path)
    with fed:
        def kill_after_round_one(rows):
            if rows[-1]["round"] == 1:          # round 2's messages are on their way
                fed.kill_node(2)
        history = fed.run(cfg, timeout=600, on_round=kill_after_round_one)
        assert fed.nodes[2].poll() is not None and fed.nodes[0].poll() is None
    assert [r["round"] for r in history] == [0, 1, 2]
    assert history[1]["clients"] == 3 and not history[1]["failed"]
    assert history[2]["clients"] == 2                       # the dead node left out …
    assert "unavailable" in history[2]["failed"][0]["reason"].lower()   # … and recorded
    assert history[2]["error"] > 0 and 0 <= history[2]["accuracy"] <= 1
    assert _ours(fed.port) == []


@pytest.mark.slow
def test_run_command_on_the_deployment_engine_writes_its_report(tmp_path):
    from lorakit.plugins.federated.run import main

    out = tmp_path / "out"
    assert main(["--engine", "deployment", "--strategies", "ffa,fedsb", "--clients", "2",
                 "--rounds", "1", "--local-steps", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["engine"] == "deployment"
    for name in ("ffa", "fedsb"):
        history = summary["runs"][name]["history"]
        assert [r["round"] for r in history] == [0, 1] and history[1]["clients"] == 2
        assert summary["figures"][f"{name}.mean_aggregation_error"] < 1e-6
    assert summary["runs"]["fedsb"]["history"][0]["init_clients"] == 2   # its init round
    assert (out / "accuracy.png").stat().st_size > 0
    assert "deployment engine" in (out / "report.md").read_text()
