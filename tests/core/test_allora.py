"""ALLoRA: scale 1, no dropout, each row's gradient scaled by 1/sqrt(|row|^2 + 1/eta^2)."""
import math

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lorakit
from lorakit.config import ALLoRAOptions
from lorakit.training.module import AdapterModule


def linear_with_allora(eta=0.5, alpha=16.0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2))
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=1, alpha=alpha, method="allora",
                                                        allora=ALLoRAOptions(eta=eta),
                                                        targets=["0"]))
    v = adapters.variants()["0"]
    with torch.no_grad():
        v.lora_A.copy_(torch.tensor([[3.0, 4.0]]))
        v.lora_B.copy_(torch.tensor([[0.0], [2.0]]))
    return model, adapters, v


def test_allora_has_scale_one_whatever_alpha_and_refuses_dropout():
    model, adapters, v = linear_with_allora(alpha=64.0)
    assert v.scale == 1.0
    x = torch.tensor([[1.0, -1.0]])
    with torch.no_grad():
        # B A x = [[0], [2]] @ [[3, 4]] @ [1, -1] = [0, -2]
        assert torch.allclose(model(x) - model[0].base(x), torch.tensor([[0.0, -2.0]]))
    with pytest.raises(lorakit.LoraKitError, match="dropout-free"):
        lorakit.attach(nn.Sequential(nn.Linear(2, 2)),
                       lorakit.LoRAConfig(method="allora", dropout=0.1, targets=["0"]))


def test_before_optimizer_step_scales_each_row_by_its_inverse_regularised_norm():
    _, adapters, v = linear_with_allora(eta=0.5)     # 1/eta^2 = 4
    v.lora_A.grad = torch.ones(1, 2)
    v.lora_B.grad = torch.ones(2, 1)
    adapters.before_optimizer_step()
    # A's one row [3, 4]: 1/sqrt(25 + 4); B's rows [0] and [2]: 1/sqrt(0 + 4) = eta, 1/sqrt(4 + 4)
    assert torch.allclose(v.lora_A.grad, torch.full((1, 2), 1 / math.sqrt(29)))
    assert torch.allclose(v.lora_B.grad, torch.tensor([[0.5], [1 / math.sqrt(8)]]))


def test_plain_lora_gradients_are_left_alone():
    model = nn.Sequential(nn.Linear(2, 2))
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=1, targets=["0"]))
    v = adapters.variants()["0"]
    v.lora_A.grad = torch.ones(1, 2)
    adapters.before_optimizer_step()
    assert torch.equal(v.lora_A.grad, torch.ones(1, 2))


class TinyRegressor(AdapterModule):
    def __init__(self, method="allora"):
        super().__init__(lr=0.1, optimizer="sgd")
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        self.attach_adapters(self.model, lorakit.LoRAConfig(rank=2, method=method,
                                                            allora=ALLoRAOptions(eta=2.0),
                                                            targets=["0", "2"]))
        with torch.no_grad():
            for v in self.adapters.variants().values():
                v.lora_B.normal_(std=0.3)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.mse_loss(self.model(x), y)


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, generator=g)
    return DataLoader(TensorDataset(x, x[:, :2].sin()), batch_size=8)


def test_a_lightning_step_moves_only_the_factors_by_the_scaled_gradient(tmp_path):
    module = TinyRegressor()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    x, y = next(iter(data()))
    loss = nn.functional.mse_loss(module.model(x), y)
    grads = dict(zip([n for n, p in module.named_parameters() if p.requires_grad],
                     torch.autograd.grad(loss, [p for p in module.parameters() if p.requires_grad])))
    pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=tmp_path).fit(module, data())
    for name, p in module.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, before[name]), name     # the base never moves
            continue
        w = before[name]
        coef = torch.rsqrt(w.square().sum(dim=1, keepdim=True) + 1 / 2.0 ** 2)
        # SGD's first step (momentum buffer = gradient): w - lr * scaled gradient
        assert torch.allclose(p, w - 0.1 * grads[name] * coef, atol=1e-6), name
        assert not torch.equal(p, w), name

