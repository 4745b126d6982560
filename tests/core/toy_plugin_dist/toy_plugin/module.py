"""The toy plugin's LightningModule, DataModule, demo and benchmark."""
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import lorakit
from lorakit.training.module import AdapterModule


class ToyModule(AdapterModule):
    """Fits y = sum(x) with LoRA on a frozen random MLP.

    Args:
        width: hidden width of the frozen MLP.
        rank: LoRA rank.
        lr: learning rate.
    """

    def __init__(self, width: int = 16, rank: int = 2, lr: float = 0.01):
        super().__init__(lr=lr)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Tanh(),
                                       torch.nn.Linear(width, 1))
        self.attach_adapters(self.net, lorakit.LoRAConfig(rank=rank, targets=["0", "2"]))

    def training_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def adapter_metadata(self):
        return {"plugin": "toy"}


class ToyData(pl.LightningDataModule):
    """Random regression data.

    Args:
        n: number of samples.
        batch_size: batch size.
    """

    def __init__(self, n: int = 32, batch_size: int = 8):
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def train_dataloader(self):
        x = torch.randn(self.n, 4, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=self.batch_size)


def demo(out_dir: Path, threads: int = 1) -> dict:
    """A demo through lorakit's demo scaffold: a headline with a goal, a plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lorakit.reports.demo import Headline, write_demo_report

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(out_dir / "toy_curve.png")
    plt.close(fig)
    figures = {"toy_metric": 0.9858555555555556, "toy_seconds": 12.3456}
    write_demo_report(
        out_dir, "toy", "toy demo: LoRA on a random MLP",
        [Headline("toy metric after training", figures["toy_metric"], "", 0.5012345,
                  "untrained", "the issue's goal: at least 0.9"),
         Headline("training time", figures["toy_seconds"], "s")],
        figures, [{"step": 1, "loss": 0.123456}], notes="A toy.",
        units={"toy_seconds": "s"})
    return figures


def bench(out_dir: Path, threads: int = 1, quick: bool = False) -> dict:
    return {"figures": {"speedup": 2.0}, "rows": [{"name": "a", "ms": 1.0}], "notes": "toy"}

