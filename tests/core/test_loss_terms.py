"""One channel for a method's extra losses: `adapters.loss_terms` and `AdapterModule`,
which adds each term to the training step's loss exactly once and logs it."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lorakit
from lorakit.training.module import AdapterModule

X = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 0, 1, 1, 0])


class Toy(AdapterModule):
    def __init__(self, config: lorakit.LoRAConfig, **kwargs):
        super().__init__(lr=0.01, **kwargs)
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        self.attach_adapters(self.model, config)
        self.task_losses: list[float] = []

    def task_loss(self, x, y):
        return F.cross_entropy(self.model(x), y)

    def training_step(self, batch, batch_idx):
        loss = self.task_loss(*batch)
        self.task_losses.append(loss.item())
        return loss


class Child(Toy):
    """A subclass whose step calls its parent's: the terms are still added once."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * 1.0


def logging(module) -> dict[str, float]:
    logged: dict[str, float] = {}
    module._trainer = object()          # stands in for a Trainer: capture self.log
    module.log = lambda key, value, **kw: logged.__setitem__(key, float(value))
    return logged


S2 = lorakit.LoRAConfig(method="s2lora", rank=3, targets=["0", "2"])
MIXTURE = lorakit.LoRAConfig(method="mixture", n_experts=4, top_k=2, rank=2, targets=["0", "2"])


@pytest.mark.parametrize("cls", [Toy, Child])
def test_a_step_with_s2lora_gets_the_l1_term_once_and_logs_it(cls):
    module = cls(S2, l1_loss=0.5)
    with torch.no_grad():
        for v in module.adapters.variants().values():
            v.lora_lambda.uniform_(-1, 1, generator=torch.Generator().manual_seed(2))
    logged = logging(module)
    loss = module.training_step((X, Y), 0)
    l1 = sum(v.lora_lambda.abs().sum() for v in module.adapters.variants().values())
    assert l1.item() > 0
    assert loss.item() == pytest.approx(module.task_losses[-1] + 0.5 * l1.item(), rel=1e-6)
    assert logged["train/default/l1"] == pytest.approx(0.5 * l1.item(), rel=1e-6)
    assert module.adapters.loss_terms(l1=0.5)["default/l1"].item() == pytest.approx(
        0.5 * module.adapters.l1_penalty().item(), rel=1e-6)


def test_without_an_l1_coefficient_s2lora_adds_nothing_to_the_loss():
    """The s2lora-whisper plugin's L1 is a proximal step (`shrink`), not a loss term."""
    module = Toy(S2)
    logged = logging(module)
    loss = module.training_step((X, Y), 0)
    assert loss.item() == module.task_losses[-1]
    assert logged == {}


@pytest.mark.parametrize("cls", [Toy, Child])
def test_a_step_with_a_mixture_gets_the_balance_loss_once_and_logs_it(cls):
    module = cls(MIXTURE)
    logged = logging(module)
    loss = module.training_step((X, Y), 0)
    balance = module.adapters.routing_terms()["default/balance"]     # of the step's forward
    assert balance.item() > 0
    assert loss.item() == pytest.approx(module.task_losses[-1] + balance.item(), rel=1e-6)
    assert logged["train/default/balance"] == pytest.approx(balance.item(), rel=1e-6)
    assert {"moe/default/entropy", "moe/default/load_e0"} <= set(logged)


def test_a_fit_adds_and_logs_the_balance_loss(tmp_path):
    class Recorded(Toy):
        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.step_loss = outputs["loss"].item()
            self.balance = self.adapters.routing_terms()["default/balance"].item()

    module = Recorded(MIXTURE)
    data = DataLoader(TensorDataset(X, Y), batch_size=6)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(module, data)
    assert module.step_loss == pytest.approx(module.task_losses[-1] + module.balance, rel=1e-6)
    assert trainer.logged_metrics["train/default/balance"].item() == pytest.approx(
        module.balance, rel=1e-6)


class BA(Toy):
    def __init__(self, hand_outputs: bool):
        super().__init__(lorakit.LoRAConfig(method="balora", rank=2, ba_consistency=1.0,
                                            ba_diversity=1.0, ba_svd=1.0, targets=["0", "2"]))
        self.hand_outputs = hand_outputs
        with torch.no_grad():
            for v in self.adapters.variants().values():
                v.lora_B.normal_(std=0.5)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        if self.hand_outputs:
            self.reg = self.output_regularisers(logits, lambda: self.model(x))
        loss = F.cross_entropy(logits, y)
        self.task_losses.append(loss.item())
        return loss


def test_output_terms_handed_in_are_added_once_and_logged():
    module = BA(hand_outputs=True)
    logged = logging(module)
    loss = module.training_step((X, Y), 0)
    assert module.reg.item() != 0
    assert loss.item() == pytest.approx(module.task_losses[-1] + module.reg.item(), rel=1e-6)
    assert {"train/default/consistency", "train/default/diversity", "train/default/svd"} \
        <= set(logged)


def test_a_step_that_never_hands_the_outputs_to_balora_is_an_error():
    with pytest.raises(lorakit.LoraKitError, match="output_regularisers"):
        BA(hand_outputs=False).training_step((X, Y), 0)
