"""Plugin federated: federated LoRA on Flower (FedAvg-LoRA, FFA-LoRA, LoRA-FAIR, Fed-SB)."""
from pathlib import Path

from lorakit.registry import Command, Plugin

PLUGIN = Plugin(
    name="federated",
    summary="federated LoRA on Flower: FedAvg-LoRA, FFA-LoRA, LoRA-FAIR, Fed-SB",
    module="lorakit.plugins.federated.module:ClientModule",
    datamodule="lorakit.plugins.federated.data:ClientData",
    default_config=str(Path(__file__).with_name("default.yaml")),
    demo="lorakit.plugins.federated.run:demo",
    extra="federated",
    requires=("flwr", "ray", "transformers"),
    commands={"run": Command(
        "lorakit.plugins.federated.run:main",
        "run each federated strategy on Flower's simulation or deployment engine; writes "
        "results.json, report.md and accuracy.png")},
)
