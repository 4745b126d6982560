"""Plugin lora3d: LoRA3D self-calibration of DUSt3R from its own multi-view predictions."""
from pathlib import Path

from lorakit.registry import Plugin

PLUGIN = Plugin(
    name="lora3d",
    summary="LoRA3D self-calibration of DUSt3R from its own globally aligned predictions",
    module="lorakit.plugins.lora3d.module:SelfCalibrationModule",
    datamodule="lorakit.plugins.lora3d.data:SceneDataModule",
    default_config=str(Path(__file__).with_name("default.yaml")),
    demo="lorakit.plugins.lora3d.demo:demo",
    extra="lora3d",
    requires=("mini_dust3r", "roma", "einops"),
    bench_suite="lorakit.benchmarks.suites.lora3d:run",
    demo_seconds=90,
)
