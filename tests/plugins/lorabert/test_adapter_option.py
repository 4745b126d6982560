"""lorabert takes its adapter as one `adapter: LoRAConfig`: every method, by the same keys."""
import dataclasses

import pytest
from lightning.pytorch.cli import LightningCLI

from lorakit.config import LoRAConfig
from lorakit.errors import LoraKitError
from lorakit.plugins.lorabert import PLUGIN
from lorakit.plugins.lorabert.data import TranscriptDataModule
from lorakit.plugins.lorabert.module import ADAPTER, LoRABertModule


def cli(*args):
    return LightningCLI(LoRABertModule, TranscriptDataModule, run=False, args=list(args),
                        parser_kwargs={"default_config_files": [PLUGIN.default_config]},
                        save_config_callback=None)


def test_the_default_adapter_is_lora_r8_on_query_and_value_with_the_head():
    assert (ADAPTER.method, ADAPTER.rank, ADAPTER.alpha) == ("lora", 8, 16.0)
    assert ADAPTER.targets == ["*.query", "*.value"] and ADAPTER.modules_to_save == ["classifier"]
    m = cli().model
    assert m.adapters.config == ADAPTER


def test_the_command_line_picks_any_method_by_model_adapter_keys():
    m = cli("--model.adapter.method", "dora", "--model.adapter.rank", "16").model
    config = m.adapters.config
    assert (config.method, config.rank, config.alpha) == ("dora", 16, 16.0)
    assert config.targets == ["*.query", "*.value"]   # the plugin's default kept
    assert m.adapters.saved and list(m.adapters.saved) == ["classifier"]


def test_the_head_stays_trained_when_modules_to_save_is_changed():
    m = LoRABertModule(adapter=dataclasses.replace(ADAPTER, modules_to_save=[]))
    assert list(m.adapters.saved) == ["classifier"]
    assert ADAPTER.modules_to_save == ["classifier"]   # the shared default is untouched


def test_old_flat_keys_are_read_with_a_deprecation_warning_naming_the_new_key():
    with pytest.warns(DeprecationWarning, match=r"model\.rank .*model\.adapter\.rank"):
        m = LoRABertModule(rank=4)
    assert m.adapters.config.rank == 4 and m.hparams.adapter["rank"] == 4
    with pytest.warns(DeprecationWarning, match=r"model\.lora_dropout .*model\.adapter\.dropout"):
        m = cli("--model.lora_dropout", "0.1", "--model.alpha", "8").model
    assert (m.adapters.config.dropout, m.adapters.config.alpha) == (0.1, 8.0)


def test_a_method_the_loop_cannot_initialise_is_refused_with_the_reason():
    with pytest.raises(LoraKitError, match="'lora_sb' is not available here: .*init_from_gradients"):
        LoRABertModule(adapter=LoRAConfig(method="lora_sb"))


def described(help_text: str, key: str) -> bool:
    """Whether `key`'s entry in `help_text` has a description before its (type: ...)."""
    block = help_text.split(f"\n  {key} ", 1)[1].split("\n  --")[0]
    return not block.split(None, 1)[1].lstrip().startswith("(type:")


def test_every_fit_option_has_a_description(capsys):
    with pytest.raises(SystemExit):
        cli("--help")
    out = capsys.readouterr().out
    for key in ("--model.adapter_file", "--model.rank", "--data.val_coding",
                "--data.test_noncoding", "--data.val_fraction", "--model.lr",
                "--model.weight_decay", "--data.num_workers"):
        assert described(out, key), key


def test_an_old_yaml_config_with_flat_keys_still_reads(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  rank: 4\n  targets: ['*.query']\n")
    with pytest.warns(DeprecationWarning, match=r"model\.targets .*model\.adapter\.targets"):
        config = cli("--config", str(old)).model.adapters.config
    assert (config.rank, config.alpha, config.targets) == (4, 16.0, ["*.query"])
