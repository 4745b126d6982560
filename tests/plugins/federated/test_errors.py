"""A bad setting or a failed client ends in one line that names the key or the client and
says what to do: a lorakit error, printed by the CLI without a stack trace."""
import json
import subprocess

import pytest

from lorakit.errors import LoraKitError
from lorakit.plugins.federated.config import (
    DPConfig,
    FairConfig,
    FederatedConfig,
    RunConfigError,
    settings,
)


@pytest.mark.parametrize("given, message", [
    ({"rank": "four"}, "federated: rank must be a whole number, got 'four'"),
    ({"lr": "fast"}, "federated: lr must be a number, got 'fast'"),
    ({"dp.enabled": "maybe"}, "federated: dp.enabled must be true or false, got 'maybe'"),
    ({"base": "bert"}, "federated: unknown base 'bert'; choose one of 'tiny', 'minilm'"),
    ({"strategy": "fedprox"},
     "federated: unknown strategy 'fedprox'; choose one of 'fedavg', 'ffa', 'fair', 'fedsb'"),
    ({"head": 2}, "federated: unknown head 2; choose one of 0, 1"),
    ({"local_steps": 3},
     "federated: unknown run-config key 'local_steps'; did you mean 'local-steps'?"),
    ({"dp.noise": 1.0},
     "federated: unknown run-config key 'dp.noise'; did you mean 'dp.noise_multiplier'?"),
    ({"epochs": 3},
     "federated: unknown run-config key 'epochs'; `lorakit federated run --help` lists them"),
    ({"clients": 0}, "federated: clients must be at least 1, got 0"),
    ({"dp.max_grad_norm": -1}, "federated: dp.max_grad_norm must be at least 0.0, got -1.0"),
    ({"fair-solver": "adam"},
     "federated: unknown fair-solver 'adam'; choose one of 'sgd', 'closed_form'"),
    ({"fair-lambda": "a lot"}, "federated: fair-lambda must be a number, got 'a lot'"),
    ({"clients": 2, "min-clients": 3}, "federated: min-clients 3 is more than clients 2: no "
                                       "round could start; lower min-clients (0: all clients)"),
])
def test_a_bad_setting_is_one_line_naming_its_key(given, message):
    with pytest.raises(RunConfigError) as err:
        settings(given)
    assert str(err.value) == message
    assert isinstance(err.value, LoraKitError) and isinstance(err.value, ValueError)


def test_the_nested_configs_check_their_own_fields_by_run_config_key():
    with pytest.raises(RunConfigError, match="^federated: dp.delta must be at least 0.0"):
        DPConfig(delta=-1e-5)
    with pytest.raises(RunConfigError, match="^federated: unknown fair-similarity 'l2'"):
        FairConfig(similarity="l2")
    with pytest.raises(RunConfigError, match="^federated: eval-split must be a string"):
        FederatedConfig(eval_split=1)


def test_flowers_run_config_values_are_read_as_the_fields_types():
    # `flwr run --run-config` and TOML hand over strings, ints for floats, bools for 0/1
    cfg = settings({"rank": "8", "lr": 1, "dp.enabled": "true", "head": False,
                    "fair-steps": 5.0, "round-timeout": "30"})
    assert (cfg.rank, cfg.lr, cfg.dp.enabled, cfg.head, cfg.fair.steps, cfg.round_timeout) == (
        8, 1.0, True, 0, 5, 30.0)
    assert type(cfg.rank) is int and type(cfg.lr) is float and type(cfg.head) is int
    # and it reads back as the same flat run config, every key in Flower's order
    assert list(cfg) == list(FederatedConfig())
    assert dict(cfg) == {**dict(FederatedConfig()), "rank": 8, "lr": 1.0, "dp.enabled": True,
                         "head": 0, "fair-steps": 5, "round-timeout": 30.0}
    assert settings(dict(cfg)) == cfg


def test_the_run_command_prints_one_line_for_a_bad_setting(capsys):
    pytest.importorskip("flwr")
    from lorakit.cli import main
    assert main(["federated", "run", "--clients", "2", "--min-clients", "3"]) == 2
    out = capsys.readouterr()
    assert out.err == ("lorakit: error: federated: min-clients 3 is more than clients 2: no "
                       "round could start; lower min-clients (0: all clients)\n")
    assert "Traceback" not in out.out + out.err


def test_a_round_no_client_could_serve_names_each_client_and_its_reason():
    pytest.importorskip("flwr")
    from lorakit.plugins.federated.errors import RunError
    from lorakit.plugins.federated.run import check_history
    history = [{"round": 0, "accuracy": 0.5},
               {"round": 1, "clients": 2, "rejected": [], "failed": [], "error": 0.1},
               {"round": 2, "clients": 0,
                "rejected": [{"node": 3, "reason": "adapter is for base 1, this run's base is 2"}],
                "failed": [{"node": 4, "reason": "<class 'flwr.clientapp.ClientAppException'>:"
                            "<'\nException ClientAppException occurred. Message: federated: "
                            "client 1 holds no training examples, so it has no gradient'>"}]}]
    check_history("fedavg", history[:2])                     # a good run passes
    with pytest.raises(RunError) as err:
        check_history("fedavg", history)
    assert str(err.value) == (
        "federated fedavg: round 2 had no usable client update (node 3 rejected: adapter is "
        "for base 1, this run's base is 2; node 4 failed: federated: client 1 holds no "
        "training examples, so it has no gradient)")


def test_a_client_with_no_examples_under_dp_is_refused_by_name():
    pytest.importorskip("opacus")
    from lorakit.plugins.federated.errors import ClientError
    from lorakit.plugins.federated.privacy import dp_plan
    with pytest.raises(ClientError, match="^federated: client 3 holds no training examples, "
                                          "so DP-SGD has no sampling rate; use fewer clients"):
        dp_plan(settings({"dp.enabled": True}), 0, partition=3)


class _Alive:
    def poll(self):
        return None


def test_a_server_stopped_by_a_lorakit_error_gives_its_line_to_the_runner(tmp_path):
    pytest.importorskip("flwr")
    from lorakit.plugins.federated.deployment import Loopback
    from lorakit.plugins.federated.errors import RunError
    fed = Loopback(2, tmp_path)
    fed.link = _Alive()
    history = tmp_path / "run.history.json"
    history.write_text(json.dumps({"done": True, "history": [{"round": 0}], "error":
                                   "Fed-SB init: no client sent a usable gradient (node 3 "
                                   "rejected: missing tensors ['a'])"}))
    with pytest.raises(RunError, match=r"^Fed-SB init: no client sent a usable gradient \("
                                       r"node 3 rejected: missing tensors \['a'\]\) \(the "
                                       r"ServerApp stopped"):
        fed.wait(history, timeout=5)


def test_a_failed_flwr_run_is_one_line_with_the_log_beside_it(tmp_path):
    pytest.importorskip("flwr")
    from lorakit.plugins.federated.deployment import _said
    out = subprocess.CompletedProcess(["flwr"], 1, stdout=json.dumps(
        {"success": False, "error-message": "Connection refused\nretry later"}), stderr="")
    assert _said(out) == "Connection refused retry later"
    out = subprocess.CompletedProcess(["flwr"], 2, stdout="", stderr="Traceback ...\nOSError: x")
    assert _said(out) == "OSError: x"
