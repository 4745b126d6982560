"""Federated aggregation maths on hand-made adapters (no Flower, no model)."""
import pytest
import torch

from lorakit.plugins.federated.aggregation import (
    FairConfig,
    aggregate,
    payload_bytes,
    reject_reason,
    sent_keys,
    similarity,
)


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


def _fair_case():
    g0 = _lora(0, out=6, inp=8, r=3)
    return g0, [_lora(i, out=6, inp=8, r=3) for i in (1, 2, 3)]


def test_fair_gradient_steps_raise_the_similarity_and_lower_the_error():
    # the paper's Eq. 8: SGD on 1 − cos(Ŵ, (B̄+ΔB)Ā) + λ‖ΔB‖², λ = 0.01, from ΔB = 0
    g0, clients = _fair_case()
    avg = aggregate("fedavg", g0, clients, [1, 1, 1])
    fair = aggregate("fair", g0, clients, [1, 1, 1])
    assert fair.error_before == pytest.approx(avg.error)
    assert fair.metrics["similarity_before"] == pytest.approx(0.516, abs=1e-3)
    assert fair.metrics["similarity_after"] > 0.78            # plain averaging: 0.52
    assert fair.error < 0.8 * avg.error                        # 4.23 against 5.42
    assert torch.equal(fair.state["enc.q.lora_A"], avg.state["enc.q.lora_A"])   # Ā kept
    assert not torch.equal(fair.state["enc.q.lora_B"], avg.state["enc.q.lora_B"])


def test_fair_lambda_trades_the_match_against_the_size_of_the_correction():
    g0, clients = _fair_case()
    runs = [aggregate("fair", g0, clients, [1, 1, 1], FairConfig(lam=lam)).metrics
            for lam in (0.0, 0.01, 1.0)]
    ratios = [m["delta_ratio"] for m in runs]
    assert ratios == sorted(ratios, reverse=True) and ratios[-1] < 0.5 * ratios[0]
    sims = [m["similarity_after"] for m in runs]
    assert sims == sorted(sims, reverse=True)


def test_fair_identical_clients_need_no_correction():
    g0 = _lora(0, out=6, inp=8, r=3)
    same = _lora(1, out=6, inp=8, r=3)
    for solver in ("sgd", "closed_form"):
        agg = aggregate("fair", g0, [same, same, same], [1, 2, 3], FairConfig(solver=solver))
        assert torch.allclose(agg.state["enc.q.lora_B"], same["enc.q.lora_B"], atol=1e-6)
        assert agg.metrics["delta_ratio"] < 1e-6 and agg.error < 1e-5


def test_fair_is_deterministic():
    g0, clients = _fair_case()
    for similarity_name in ("cosine", "column_cosine"):
        cfg = FairConfig(similarity=similarity_name, steps=200)
        one = aggregate("fair", g0, clients, [2, 1, 1], cfg)
        two = aggregate("fair", g0, clients, [2, 1, 1], cfg)
        assert torch.equal(one.state["enc.q.lora_B"], two.state["enc.q.lora_B"])
        assert one.metrics["similarity_after"] > one.metrics["similarity_before"]


def test_fair_closed_form_is_the_frobenius_ridge_solution():
    g0, clients = _fair_case()
    fair = aggregate("fair", g0, clients, [1, 1, 1], FairConfig(solver="closed_form", lam=0.0))
    a = fair.state["enc.q.lora_A"].double()
    ideal = sum(c["enc.q.lora_B"].double() @ c["enc.q.lora_A"].double() for c in clients) / 3
    projected = ideal @ a.T @ torch.linalg.inv(a @ a.T) @ a     # best product with row space Ā
    assert fair.error == pytest.approx(float(torch.linalg.matrix_norm(projected - ideal)),
                                       rel=1e-5)


def test_similarities_in_factor_space_match_the_full_product():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 9, generator=g), torch.randn(2, 7, 3, generator=g)
    target = torch.randn(2, 7, 9, generator=g)
    full = b @ a
    cosine = torch.nn.functional.cosine_similarity(full.flatten(1), target.flatten(1), dim=1)
    columns = torch.nn.functional.cosine_similarity(full, target, dim=1).mean(1)
    assert torch.allclose(similarity("cosine", a, target)(b), cosine, atol=1e-5)
    assert torch.allclose(similarity("column_cosine", a, target)(b), columns, atol=1e-5)


def test_fair_settings_are_checked():
    with pytest.raises(ValueError, match="solver"):
        FairConfig(solver="adam")
    with pytest.raises(ValueError, match="similarity"):
        FairConfig(similarity="l2")
    cfg = FairConfig.from_settings({"fair-solver": "closed_form", "fair-similarity": "cosine",
                                    "fair-steps": "5", "fair-lr": 0.1, "fair-lambda": 0.5})
    assert cfg == FairConfig("closed_form", "cosine", 5, 0.1, 0.5)


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
