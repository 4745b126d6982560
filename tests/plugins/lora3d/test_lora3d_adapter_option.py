"""lora3d takes its adapter as one `adapter: LoRAConfig`: every method, by the same keys."""
import dataclasses

import pytest

from lorakit.config import LoRAConfig
from lorakit.errors import LoraKitError

pytest.importorskip("mini_dust3r.model", reason="lora3d extra not installed")


def cli(*args):
    from lightning.pytorch.cli import LightningCLI

    from lorakit.plugins.lora3d import PLUGIN
    from lorakit.plugins.lora3d.data import SceneDataModule
    from lorakit.plugins.lora3d.module import SelfCalibrationModule
    return LightningCLI(SelfCalibrationModule, SceneDataModule, run=False, args=list(args),
                        parser_kwargs={"default_config_files": [PLUGIN.default_config]},
                        save_config_callback=None)


def test_the_default_adapter_is_lora_r8_on_the_80_transformer_linears():
    from lorakit.plugins.lora3d.module import ADAPTER, LORA_TARGETS
    assert (ADAPTER.method, ADAPTER.rank, ADAPTER.alpha) == ("lora", 8, 16.0)
    assert ADAPTER.targets == LORA_TARGETS
    m = cli().model   # default.yaml spells the same adapter out
    assert m.adapters.config == ADAPTER and len(m.adapters.layers) == 80


def test_the_command_line_picks_any_method_by_model_adapter_keys():
    from lorakit.plugins.lora3d.module import LORA_TARGETS
    config = cli("--model.adapter.method", "dora", "--model.adapter.rank", "4").model \
        .adapters.config
    assert (config.method, config.rank, config.alpha, config.targets) == (
        "dora", 4, 16.0, LORA_TARGETS)


def test_old_flat_keys_are_read_with_a_deprecation_warning_naming_the_new_key():
    from lorakit.plugins.lora3d.module import ADAPTER, SelfCalibrationModule
    with pytest.warns(DeprecationWarning, match=r"model\.rank .*model\.adapter\.rank"):
        m = SelfCalibrationModule(rank=2)
    assert m.adapters.config == dataclasses.replace(ADAPTER, rank=2)
    assert m.hparams.adapter["rank"] == 2 and "rank" not in m.hparams


def test_a_method_the_loop_cannot_initialise_is_refused_with_the_reason():
    from lorakit.plugins.lora3d.module import SelfCalibrationModule
    with pytest.raises(LoraKitError, match="'lora_ga' is not available here: .*init_from_gradients"):
        SelfCalibrationModule(adapter=LoRAConfig(method="lora_ga"))
