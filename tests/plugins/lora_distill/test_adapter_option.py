"""lora-distill takes its adapter as one `adapter: LoRAConfig`: every method, by the same keys
(a mixture refused: the student is also exported in diffusers' LoRA layout)."""
from __future__ import annotations

from dataclasses import replace

import pytest

pytest.importorskip("diffusers")

from lightning.pytorch.cli import LightningCLI  # noqa: E402

from lorakit.config import LoRAConfig  # noqa: E402
from lorakit.domains.imaging.guided_unet import COND_PROJ  # noqa: E402
from lorakit.domains.imaging.teacher import build_unet, scheduler  # noqa: E402
from lorakit.errors import LoraKitError  # noqa: E402
from lorakit.plugins.lora_distill import PLUGIN  # noqa: E402
from lorakit.plugins.lora_distill.data import ConditioningDataModule  # noqa: E402
from lorakit.plugins.lora_distill.module import ADAPTER, DEFAULT_TARGETS, DistillModule  # noqa: E402,E501


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    build_unet(sample_size=8, block_out_channels=(8, 16), layers_per_block=1) \
        .save_pretrained(folder)
    scheduler().save_config(folder)
    return folder


def cli(*args):
    return LightningCLI(DistillModule, ConditioningDataModule, run=False, args=list(args),
                        parser_kwargs={"default_config_files": [PLUGIN.default_config]},
                        save_config_callback=None)


def test_the_default_adapter_is_lora_r8_alpha8_with_the_guidance_projection():
    assert (ADAPTER.method, ADAPTER.rank, ADAPTER.alpha) == ("lora", 8, 8.0)
    assert ADAPTER.targets == DEFAULT_TARGETS and ADAPTER.modules_to_save == [COND_PROJ]
    config = cli().model.adapters.config   # default.yaml spells the same adapter out
    assert (config.rank, config.alpha, config.modules_to_save) == (8, 8.0, [COND_PROJ])


def test_the_command_line_picks_any_method_by_model_adapter_keys(teacher_dir):
    config = cli("--model.pretrained", str(teacher_dir), "--model.adapter.method", "dora",
                 "--model.adapter.rank", "4").model.adapters.config
    assert (config.method, config.rank, config.alpha) == ("dora", 4, 8.0)
    assert COND_PROJ in config.modules_to_save


def test_the_old_lora_key_still_reads_with_a_warning_naming_the_new_key(teacher_dir):
    with pytest.warns(DeprecationWarning, match=r"model\.lora is deprecated; use model\.adapter"):
        m = DistillModule(pretrained=str(teacher_dir), lora=replace(ADAPTER, rank=2))
    assert m.adapters.config.rank == 2 and m.hparams.adapter["rank"] == 2
    assert "lora" not in m.hparams


def test_a_mixture_is_refused_with_the_reason(teacher_dir):
    with pytest.raises(LoraKitError, match="'mixture' is not available .*diffusers' LoRA layout"):
        DistillModule(pretrained=str(teacher_dir),
                      adapter=replace(ADAPTER, method="mixture", n_experts=2, top_k=1))
    with pytest.raises(LoraKitError, match="'lora_sb' is not available here"):
        DistillModule(pretrained=str(teacher_dir), adapter=LoRAConfig(method="lora_sb"))
