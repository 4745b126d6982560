"""Plugin s2lora-whisper: Sparsely Shared LoRA (S2-LoRA) on openai-whisper for low-resource (children's) speech."""
from pathlib import Path

from lorakit.registry import Plugin

PLUGIN = Plugin(
    name="s2lora-whisper",
    summary="Sparsely Shared LoRA (S2-LoRA) on openai-whisper for low-resource (children's) speech",
    module="lorakit.plugins.s2lora_whisper.module:WhisperAdapterModule",
    datamodule="lorakit.plugins.s2lora_whisper.data:SpeechDataModule",
    default_config=str(Path(__file__).with_name("default.yaml")),
    demo="lorakit.plugins.s2lora_whisper.demo:demo",
    extra="whisper",
    requires=("whisper", "soundfile", "jiwer", "scipy"),
    bench_suite="lorakit.benchmarks.suites.s2lora_whisper:run",
    demo_seconds=490,
)
