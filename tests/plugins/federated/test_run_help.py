"""`lorakit federated run --help` documents every option, from the config's own fields."""
import pytest

pytest.importorskip("flwr")
from lorakit.plugins.federated.config import FederatedConfig, options  # noqa: E402
from lorakit.plugins.federated.run import main  # noqa: E402


def test_every_run_setting_has_help_and_the_help_prints_it(capsys):
    helps = {key: text for key, _, _, text in options()}
    assert set(helps) == set(FederatedConfig())           # one help per run-config key
    assert all(text.strip() for text in helps.values())
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key, value in FederatedConfig().items():
        if key not in ("strategy", "history-file"):
            assert f"--{key}" in text
            assert " ".join(helps[key].split())[:30] in text, key
            assert f"(default: {value})" in text, key


@pytest.mark.parametrize("flag", ["--eval-split", "--fedsb-init", "--base", "--fair-solver"])
def test_a_setting_with_fixed_values_refuses_another_naming_them(flag, capsys):
    with pytest.raises(SystemExit):
        main([flag, "nonsense"])
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err


def test_every_flag_reaches_the_run_settings_under_its_run_config_key(monkeypatch):
    from lorakit.plugins.federated import run
    seen = {}
    monkeypatch.setattr(run, "run_all", lambda out, names, engine, **kw: seen.update(kw))
    main(["--local-steps", "3", "--min-clients", "1", "--dp.enabled", "true",
          "--fair-lambda", "0.5", "--eval-split", "val", "--out", "unused"])
    assert set(seen) == set(FederatedConfig()) - {"strategy", "history-file"}
    cfg = run.settings(seen)
    assert (cfg.local_steps, cfg.min_clients, cfg.dp.enabled, cfg.fair.lam, cfg.eval_split) == (
        3, 1, True, 0.5, "val")
