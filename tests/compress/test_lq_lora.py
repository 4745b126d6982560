"""LQ-LoRA: the decomposition beats plain quantization at the same bits, the ILP keeps the
budget and spends bits where the (Fisher-weighted) error is, and the model starts at
Q + scale·B A."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lorakit
from lorakit.compress.lq_lora import (
    LQReport,
    choose_configs,
    fisher_diagonal,
    lq_decompose,
    lq_lora,
)
from lorakit.layers.quantized import QuantizedLinear, QuantSpec

from .tiny import linear_output, tiny_llama, token_batch

pytest.importorskip("hqq")
pytest.importorskip("scipy")

SPECS = ("int2-g64", "int3-g64", "int4-g64")


def weight(out=64, inp=128, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(out, 4, generator=g) @ torch.randn(4, inp, generator=g)
    return (0.3 * low + torch.randn(out, inp, generator=g)) * scale


class Three(nn.Module):
    """Three 64 x 64 Linears side by side; `loud` scales one weight up (its errors with it)."""

    def __init__(self, loud=None, seed=0):
        super().__init__()
        self.a, self.b, self.c = (nn.Linear(64, 64) for _ in range(3))
        with torch.no_grad():
            for i, name in enumerate("abc"):
                getattr(self, name).weight.copy_(weight(64, 64, seed + i,
                                                        0.5 if name == loud else 0.05))

    def forward(self, x):
        return self.a(x) + self.b(x) + self.c(x)


def bits_of(spec):
    return 8 * QuantizedLinear(weight(64, 64), None, QuantSpec.parse(spec)).nbytes() / 64 ** 2


@pytest.mark.parametrize("spec", ["int2-g64", "int3-g64", "nf4-g64"])
def test_the_decomposition_error_is_below_plain_quantization_at_the_same_bits(spec):
    w = weight()
    plain = QuantizedLinear(w, None, QuantSpec.parse(spec)).dequantize()
    plain_error = float(torch.linalg.norm(w - plain) / torch.linalg.norm(w))
    d = lq_decompose(w, spec, rank=8, iterations=10)
    assert d.error < 0.9 * plain_error
    assert d.quantized.nbytes() == QuantizedLinear(w, None, QuantSpec.parse(spec)).nbytes()
    assert 1 <= d.iterations <= 10
    again = (w - d.quantized.dequantize() - d.l1 @ d.l2).norm() / w.norm()
    assert abs(float(again) - d.error) <= 1e-5


def test_the_ilp_keeps_the_budget_and_gives_the_loud_matrix_the_most_bits():
    low, mid, high = (bits_of(s) for s in SPECS)
    budget = (2 * low + high) / 3 + 0.01        # one matrix can afford the top config
    model = Three(loud="b")
    adapters, report = lq_lora(model, ["a", "b", "c"], rank=4, budget_bits=budget,
                               candidates=SPECS, iterations=4)
    chosen = {m.path: m.config for m in report.matrices}
    assert chosen["b"] == "int4-g64"
    assert chosen["a"] == chosen["c"] == "int2-g64"
    assert report.average_bits <= budget
    assert report.average_bits == pytest.approx((2 * low + high) / 3, rel=1e-6)
    assert all(isinstance(layer.base, QuantizedLinear) for layer in adapters.layers.values())
    assert adapters.layers["b"].base.spec == QuantSpec.parse("int4-g64")


def test_one_candidate_table_serves_every_budget_as_a_fresh_decomposition_would():
    import json

    from lorakit.compress.lq_lora import candidate_table

    low, mid, high = (bits_of(s) for s in SPECS)
    table = json.loads(json.dumps(candidate_table(Three(loud="b"), ["a", "b", "c"], rank=4,
                                                  candidates=SPECS, iterations=4)))
    for budget in ((2 * low + high) / 3 + 0.01, high + 0.01):
        _, fresh = lq_lora(Three(loud="b"), ["a", "b", "c"], rank=4, budget_bits=budget,
                           candidates=SPECS, iterations=4)
        _, reused = lq_lora(Three(loud="b"), ["a", "b", "c"], rank=4, budget_bits=budget,
                            candidates=SPECS, iterations=4, table=table)
        assert [(m.path, m.config, m.error) for m in reused.matrices] == [
            (m.path, m.config, m.error) for m in fresh.matrices]
    with pytest.raises(lorakit.LoraKitError, match="candidate table is of other modules"):
        lq_lora(Three(), ["a", "b"], rank=4, candidates=SPECS, table=table)


def test_a_planted_fisher_moves_the_bits_to_the_matrix_it_weighs():
    low, mid, high = (bits_of(s) for s in SPECS)
    budget = (2 * low + high) / 3 + 0.01
    choices = {}
    for heavy in "ac":
        fisher = {p: torch.full((64, 64), 100.0 if p == heavy else 1.0) for p in "abc"}
        _, report = lq_lora(Three(), ["a", "b", "c"], rank=4, budget_bits=budget,
                            candidates=SPECS, fisher=fisher, iterations=4)
        choices[heavy] = {m.path: m.config for m in report.matrices}
        assert report.fisher and report.average_bits <= budget
    assert choices["a"]["a"] == "int4-g64" and choices["a"]["c"] == "int2-g64"
    assert choices["c"]["c"] == "int4-g64" and choices["c"]["a"] == "int2-g64"


def test_the_ilp_solves_a_planted_table_exactly():
    errors = {"x": {"lo": 10.0, "hi": 1.0}, "y": {"lo": 3.0, "hi": 2.0}}
    storage = {"x": {"lo": 200.0, "hi": 400.0}, "y": {"lo": 200.0, "hi": 400.0}}
    numel = {"x": 100, "y": 100}
    assert choose_configs(errors, storage, numel, budget_bits=3.0) == {"x": "hi", "y": "lo"}
    assert choose_configs(errors, storage, numel, budget_bits=4.0) == {"x": "hi", "y": "hi"}
    with pytest.raises(lorakit.LoraKitError, match="smallest candidates need 2.000"):
        choose_configs(errors, storage, numel, budget_bits=1.5)


def test_fisher_diagonal_is_the_mean_squared_gradient_and_leaves_the_model_as_it_was():
    model = Three()
    model.a.weight.requires_grad_(False)
    batches = [torch.randn(5, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]

    def loss(m, x):
        return m(x).pow(2).mean()

    fisher = fisher_diagonal(model, batches, loss, ["a", "c"])
    expected = torch.zeros(64, 64)
    for x in batches:
        w = model.c.weight.detach().clone().requires_grad_(True)
        y = model.a(x) + model.b(x) + F.linear(x, w, model.c.bias)
        (g,) = torch.autograd.grad(y.pow(2).mean(), w)
        expected += g.pow(2) / 3
    assert torch.allclose(fisher["c"], expected, rtol=1e-5, atol=1e-12)
    assert set(fisher) == {"a", "c"} and fisher["a"].abs().sum() > 0
    assert not model.a.weight.requires_grad and model.c.weight.requires_grad
    assert model.a.weight.grad is None and model.c.weight.grad is None


def test_the_model_at_init_is_q_plus_scaled_ba_and_only_the_adapter_trains():
    model = tiny_llama()
    ids = token_batch()
    targets = ["*.q_proj", "*.o_proj", "*.gate_proj"]
    fisher = fisher_diagonal(model, [ids, token_batch(1)],
                             lambda m, b: m(b, labels=b).loss, targets)
    adapters, report = lq_lora(model, targets, rank=4, alpha=8.0, budget_bits=5.0,
                               candidates=("int3-g64", "int4-g64"), fisher=fisher, iterations=3)
    assert isinstance(report, LQReport) and len(report.matrices) == 6
    assert set(report.to_dict()) >= {"matrices", "average_bits", "budget_bits"}
    x = torch.randn(2, 3, 64)
    for layer in adapters.layers.values():
        v = layer.variants["default"]
        assert v.scale == 2.0
        w = layer.base.dequantize() + v.scale * v.lora_B @ v.lora_A
        assert (linear_output(layer, x) - F.linear(x, w, layer.base.bias)).abs().max() <= 1e-5
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".variants.default.lora_" in n for n in trained)
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_a_candidate_whose_group_does_not_fit_is_skipped_and_none_fitting_is_an_error():
    model = nn.Sequential(nn.Linear(96, 8))
    _, report = lq_lora(model, ["0"], rank=2, budget_bits=8.0,
                        candidates=("int3-g64", "int3-g32"), iterations=2)
    assert report.matrices[0].config == "int3-g32"
    with pytest.raises(lorakit.LoraKitError, match="fits no candidate"):
        lq_lora(nn.Sequential(nn.Linear(96, 8)), ["0"], rank=2, candidates=("int3-g64",))

