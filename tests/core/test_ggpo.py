"""LoRA-GGPO: the step's gradient is taken at W + dW + eps, eps sized by weight and gradient
row norms; the perturbation is gone after the step."""
import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lorakit
from lorakit.config import GGPOOptions
from lorakit.training.module import AdapterModule

SIGMA, BETA, LR, SCALE = 0.3, 0.2, 0.1, 2.0


def tiny():
    """Linear 3 -> 2 in float64, rank 1, every number fixed."""
    model = nn.Sequential(nn.Linear(3, 2, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 3.0]]))
    adapters = lorakit.attach(model, lorakit.LoRAConfig(
        rank=1, alpha=SCALE, method="ggpo", ggpo=GGPOOptions(sigma=SIGMA, beta=BETA),
        targets=["0"]))
    v = adapters.variants()["0"]
    with torch.no_grad():
        v.lora_A.copy_(torch.tensor([[0.5, 1.0, -1.0]]))
        v.lora_B.copy_(torch.tensor([[0.2], [-0.4]]))
    x = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 1.0], [2.0, 0.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    return model, adapters, v, x, y


def by_hand(w, a, b, x, y, seed):
    """The GGPO step with explicit matrix calculus, no autograd."""
    def grads(weight):                       # loss = mean((x Wᵀ - y)²)
        g = 2 * (x @ weight.T - y).T @ x / y.numel()    # dL/dW (2 × 3)
        return SCALE * b.T @ g, SCALE * g @ a.T          # dL/dA, dL/dB
    adapted = w + SCALE * b @ a
    ga, gb = grads(adapted)
    full = SCALE * (b @ ga + gb @ a)
    std = (SIGMA * adapted.norm(dim=1) + BETA * full.norm(dim=1) ** 2) / math.sqrt(2)
    torch.manual_seed(seed)
    eps = torch.randn(2, 3).double() * std[:, None]
    ga2, gb2 = grads(adapted + eps)
    return a - LR * ga2, b - LR * gb2


def test_the_update_equals_the_hand_computed_perturbed_gradient_step():
    model, adapters, v, x, y = tiny()
    a0, b0, w = v.lora_A.detach().clone(), v.lora_B.detach().clone(), model[0].base.weight
    want_a, want_b = by_hand(w.detach(), a0, b0, x, y, seed=7)
    opt = torch.optim.SGD(adapters.parameters(), lr=LR)
    F.mse_loss(model(x), y).backward()
    torch.manual_seed(7)
    with adapters.perturbed() as n:
        assert n == 1
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
    opt.step()
    assert torch.allclose(v.lora_A, want_a, atol=1e-12)
    assert torch.allclose(v.lora_B, want_b, atol=1e-12)
    assert v.perturbation is None
    assert torch.equal(model[0].base.weight, w)


def test_the_perturbation_adds_eps_to_the_weight_and_restore_removes_it_exactly():
    model, adapters, v, x, y = tiny()
    with torch.no_grad():
        clean = model(x)
    F.mse_loss(model(x), y).backward()
    adapters.perturb()
    eps = v.perturbation.clone()
    with torch.no_grad():
        assert torch.allclose(model(x) - clean, x @ eps.T, atol=1e-12)
        adapters.restore()
        assert torch.equal(model(x), clean)


def test_nothing_is_perturbed_before_a_backward_or_for_plain_lora():
    _, adapters, v, _, _ = tiny()
    assert adapters.perturbs and adapters.perturb() == 0 and v.perturbation is None
    plain = lorakit.attach(nn.Sequential(nn.Linear(3, 2)), lorakit.LoRAConfig(targets=["0"]))
    assert not plain.perturbs


def test_an_embedding_is_perturbed_in_its_own_layout():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4))
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=2, method="ggpo", targets=["0"]))
    v = adapters.variants()["0"]
    ids = torch.tensor([[1, 5, 9]])
    model(ids).square().sum().backward()
    with torch.no_grad():
        clean = model(ids)
        with adapters.perturbed():
            # ΔW is (dim × num): the looked-up row of token t is eps[:, t]
            assert torch.allclose(model(ids) - clean, v.perturbation[:, ids[0]].T[None])


class TinyRegressor(AdapterModule):
    def __init__(self, **kw):
        super().__init__(lr=0.05, optimizer="adamw")
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
        self.attach_adapters(self.model, lorakit.LoRAConfig(rank=2, method="ggpo",
                                                            targets=["0", "2"]))
        self.calls, self.perturbed_calls, self.left_over = 0, 0, []

    def training_step(self, batch, _):
        x, y = batch
        self.calls += 1
        self.perturbed_calls += any(v.perturbation is not None
                                    for v in self.adapters.variants().values())
        return F.mse_loss(self.model(x), y)

    def on_train_batch_end(self, *args):
        self.left_over.append([v.perturbation is not None
                               for v in self.adapters.variants().values()])


def loader():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, generator=g)
    return DataLoader(TensorDataset(x, x[:, :2].cos()), batch_size=8)


def trainer(tmp_path, **kw):
    return pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, **kw)


def test_adapter_module_runs_a_perturbed_second_pass_and_moves_only_the_factors(tmp_path):
    module = TinyRegressor()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer(tmp_path).fit(module, loader())
    assert module.calls == 4 and module.perturbed_calls == 2     # 2 steps, 2 passes each
    assert module.left_over == [[False, False], [False, False]]  # removed after each step
    for name, p in module.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == ("lora_" in name), name


def test_gradient_accumulation_is_refused_with_a_perturbing_method(tmp_path):
    with pytest.raises(lorakit.LoraKitError, match="accumulate_grad_batches"):
        trainer(tmp_path, accumulate_grad_batches=2).fit(TinyRegressor(), loader())
