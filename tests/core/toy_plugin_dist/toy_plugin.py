"""A third-party plugin, registered only through its own dist-info entry points."""
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import lorakit
from lorakit.lightning_module import AdapterModule
from lorakit.registry import Plugin


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

    def on_fit_end(self):
        self.adapters.save(Path(self.trainer.default_root_dir) / "toy.safetensors")


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
    (out_dir / "report.md").write_text("# toy demo\n")
    return {"toy_metric": 1.5}


def bench(out_dir: Path, threads: int = 1, quick: bool = False) -> dict:
    return {"figures": {"speedup": 2.0}, "rows": [{"name": "a", "ms": 1.0}], "notes": "toy"}


PLUGIN = Plugin(name="toy", summary="a third-party toy plugin", module="toy_plugin:ToyModule",
                datamodule="toy_plugin:ToyData",
                default_config=str(Path(__file__).with_name("toy.yaml")), demo="toy_plugin:demo",
                extra="", requires=("torch",), bench_suite="toy_plugin:bench")
