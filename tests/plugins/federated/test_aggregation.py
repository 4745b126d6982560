"""Federated aggregation maths on hand-made adapters (no Flower, no model)."""
import pytest
import torch

from lorakit.plugins.federated.aggregation import aggregate, payload_bytes, reject_reason, sent_keys


def _lora(seed, out=5, inp=4, r=2, path="enc.q"):
    g = torch.Generator().manual_seed(seed)
    return {f"{path}.lora_A": torch.randn(r, inp, generator=g),
            f"{path}.lora_B": torch.randn(out, r, generator=g)}


def test_fedavg_error_is_the_formula():
    g0 = _lora(0)
    clients = [_lora(1), _lora(2), _lora(3)]
    w = [1.0, 2.0, 1.0]
    agg = aggregate("fedavg", g0, clients, w)
    p = torch.tensor(w) / 4
    a = sum(pi * c["enc.q.lora_A"] for pi, c in zip(p, clients))
    b = sum(pi * c["enc.q.lora_B"] for pi, c in zip(p, clients))
    ideal = sum(pi * c["enc.q.lora_B"] @ c["enc.q.lora_A"] for pi, c in zip(p, clients))
    assert torch.allclose(agg.state["enc.q.lora_A"], a, atol=1e-6)
    assert torch.allclose(agg.state["enc.q.lora_B"], b, atol=1e-6)
    assert agg.error == pytest.approx(float(torch.linalg.matrix_norm(b @ a - ideal)), rel=1e-5)
    assert agg.error > 0.1


def test_ffa_is_exact_and_sends_half():
    g0 = _lora(0)
    keys = sent_keys("ffa", g0)
    assert keys == ["enc.q.lora_B"]
    clients = [{k: _lora(i)[k] for k in keys} for i in (1, 2, 3)]
    agg = aggregate("ffa", g0, clients, [1, 1, 1])
    ideal = sum(c["enc.q.lora_B"] @ g0["enc.q.lora_A"] for c in clients) / 3
    assert torch.allclose(agg.state["enc.q.lora_B"] @ agg.state["enc.q.lora_A"], ideal, atol=1e-5)
    assert agg.error < 1e-6
    assert torch.equal(agg.state["enc.q.lora_A"], g0["enc.q.lora_A"])


def test_fedsb_is_exact():
    g = torch.Generator().manual_seed(0)
    g0 = {"m.lora_A": torch.randn(2, 6, generator=g), "m.lora_B": torch.randn(7, 2, generator=g),
          "m.lora_R": torch.zeros(2, 2)}
    assert sent_keys("fedsb", g0) == ["m.lora_R"]
    clients = [{"m.lora_R": torch.randn(2, 2, generator=g)} for _ in range(4)]
    agg = aggregate("fedsb", g0, clients, [3, 1, 1, 1])
    p = [0.5, 1 / 6, 1 / 6, 1 / 6]
    ideal = sum(pi * g0["m.lora_B"] @ c["m.lora_R"] @ g0["m.lora_A"] for pi, c in zip(p, clients))
    got = agg.state["m.lora_B"] @ agg.state["m.lora_R"] @ agg.state["m.lora_A"]
    assert torch.allclose(got, ideal, atol=1e-5)
    assert agg.error < 1e-6
    assert payload_bytes(clients[0]) == 4 * 4     # r² floats, whatever the client count


def test_fair_corrects_fedavg():
    g0 = _lora(0, out=6, inp=8, r=3)
    clients = [_lora(i, out=6, inp=8, r=3) for i in (1, 2, 3)]
    avg = aggregate("fedavg", g0, clients, [1, 1, 1])
    fair = aggregate("fair", g0, clients, [1, 1, 1])
    assert fair.error_before == pytest.approx(avg.error)
    assert fair.error < 0.9 * avg.error
    assert torch.allclose(fair.state["enc.q.lora_A"], avg.state["enc.q.lora_A"])


def test_reject_reasons():
    expected = {"enc.q.lora_B": (5, 2)}
    ok = {"enc.q.lora_B": torch.zeros(5, 2)}
    assert reject_reason(ok, expected) is None
    assert "shape" in reject_reason({"enc.q.lora_B": torch.zeros(5, 3)}, expected)
    assert "missing" in reject_reason({}, expected)
    assert "unexpected" in reject_reason({**ok, "x.lora_B": torch.zeros(1)}, expected)
    assert "non-finite" in reject_reason({"enc.q.lora_B": torch.full((5, 2), float("nan"))},
                                         expected)
    assert "base" in reject_reason(ok, expected, base_id="minilm", client_base_id="other")
