"""Run by test_ddp.py: two CPU processes (gloo) train one adapter; each rank saves its copy."""
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import lorakit
from lorakit.training.module import AdapterModule


class Regressor(AdapterModule):
    def __init__(self):
        super().__init__(lr=1e-2)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(),
                                       torch.nn.Linear(32, 1))
        self.attach_adapters(self.net, lorakit.LoRAConfig(rank=2, targets=["0", "2"]))

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    module = Regressor()
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=2,
                         logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False)
    trainer.fit(module, data)
    module.adapters.save(out / f"rank{trainer.global_rank}.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
