"""Plugin lorabert: LoRA-BERT: lncRNA vs mRNA classification with a k-mer BERT."""
from pathlib import Path

from lorakit.registry import Command, Plugin

PLUGIN = Plugin(
    name="lorabert",
    summary="LoRA-BERT: lncRNA vs mRNA classification with a k-mer BERT",
    module="lorakit.plugins.lorabert.module:LoRABertModule",
    datamodule="lorakit.plugins.lorabert.data:TranscriptDataModule",
    default_config=str(Path(__file__).with_name("default.yaml")),
    demo="lorakit.plugins.lorabert.demo:demo",
    extra="lorabert",
    requires=("transformers", "Bio", "sklearn",),
    bench_suite="lorakit.benchmarks.suites.lorabert:run",
    demo_seconds=290,
    commands={"pretrain": Command(
        "lorakit.plugins.lorabert.pretrain:main",
        "pre-train a small k-mer BERT base by masked language modelling on FASTA files")},
)
