"""s2lora-whisper takes its adapter as one `adapter: LoRAConfig`; bitfit / full are a mode."""
from dataclasses import replace

import pytest
from lightning.pytorch.cli import LightningCLI

from lorakit.config import LoRAConfig
from lorakit.domains.speech.pretrained import tiny_en_checkpoint
from lorakit.errors import LoraKitError
from lorakit.plugins.s2lora_whisper import PLUGIN
from lorakit.plugins.s2lora_whisper.data import SpeechDataModule
from lorakit.plugins.s2lora_whisper.module import ADAPTER, TARGETS, WhisperAdapterModule


def cli(*args):
    return LightningCLI(WhisperAdapterModule, SpeechDataModule, run=False,
                        args=["--model.checkpoint", str(tiny_en_checkpoint()), *args],
                        parser_kwargs={"default_config_files": [PLUGIN.default_config]},
                        save_config_callback=None)


def test_the_default_adapter_is_s2lora_r8_on_every_attention_and_mlp_linear():
    assert (ADAPTER.method, ADAPTER.rank, ADAPTER.alpha, ADAPTER.targets) == (
        "s2lora", 8, 16.0, TARGETS)
    m = cli().model   # default.yaml spells the same adapter out
    assert m.mode == "adapter" and m.adapters.config == ADAPTER


def test_the_command_line_picks_any_method_by_model_adapter_keys():
    m = cli("--model.adapter.method", "dora", "--model.adapter.rank", "4").model
    config = m.adapters.config
    assert (config.method, config.rank, config.targets) == ("dora", 4, TARGETS)


def test_the_old_method_key_still_reads_with_a_warning_naming_the_new_key():
    checkpoint = str(tiny_en_checkpoint())
    with pytest.warns(DeprecationWarning, match=r"model\.method .*model\.adapter\.method"):
        m = WhisperAdapterModule(checkpoint=checkpoint, method="lora", rank=4)
    assert m.adapters.config == replace(ADAPTER, method="lora", rank=4)
    with pytest.warns(DeprecationWarning, match=r"model\.method full is deprecated; use "
                                                r"model\.mode full"):
        m = WhisperAdapterModule(checkpoint=checkpoint, method="full")
    assert m.mode == "full" and m.adapters is None and m.hparams.mode == "full"


def test_a_method_the_loop_cannot_initialise_is_refused_with_the_reason():
    with pytest.raises(LoraKitError, match="'lora_sb' is not available here: .*init_from_gradients"):
        WhisperAdapterModule(checkpoint=str(tiny_en_checkpoint()),
                             adapter=LoRAConfig(method="lora_sb", targets=TARGETS))
