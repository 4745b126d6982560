"""Plugin lora-distill: LoRA guidance distillation of classifier-free-guided diffusion models."""
from pathlib import Path

from lorakit.registry import Command, Plugin

PLUGIN = Plugin(
    name="lora-distill",
    summary="LoRA guidance distillation of classifier-free-guided diffusion models",
    module="lorakit.plugins.lora_distill.module:DistillModule",
    datamodule="lorakit.plugins.lora_distill.data:ConditioningDataModule",
    default_config=str(Path(__file__).with_name("default.yaml")),
    demo="lorakit.plugins.lora_distill.demo:demo",
    extra="distill",
    requires=("diffusers", "sklearn",),
    bench_suite="lorakit.benchmarks.suites.lora_distill:run",
    demo_seconds=560,
    commands={"export": Command(
        "lorakit.plugins.lora_distill.diffusers_export:main",
        "write a trained adapter in diffusers' LoRA layout (pytorch_lora_weights.safetensors)")},
)
