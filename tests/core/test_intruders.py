"""Intruder dimensions: a new high singular direction is counted, a small change is not;
`lorakit adapter analyze` reports them per matrix and refuses another model's base."""
import json

import pytest
import torch
from safetensors.torch import save_file

import lorakit
from lorakit.analysis.intruders import analyze_adapter, effective_rank, matrix_report
from lorakit.cli import main


def lorakit_cli(capsys, *args):
    """`lorakit ARGS` in this process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def base_matrix(out=20, inp=16, seed=0):
    """W₀ = U diag(16, 15, ..., 1) Vᵀ: distinct singular values, random orthonormal U, V."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(out, out, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(inp, inp, generator=g, dtype=torch.float64))[0]
    s = torch.arange(inp, 0, -1, dtype=torch.float64)
    return u[:, :inp] @ torch.diag(s) @ v.T, u, v


def test_an_injected_orthogonal_high_singular_direction_is_one_intruder():
    w0, u, v = base_matrix()
    # u[:, 16] is orthogonal to every left singular vector of W₀ (they span u[:, :16])
    delta = 100.0 * torch.outer(u[:, 16], v[:, -1])
    assert lorakit.intruder_dimensions(w0, w0 + delta) == 1
    report = matrix_report(w0, w0 + delta)
    assert report["intruders"] == 1 and report["max_similarity"][0] < 0.05
    assert min(report["max_similarity"][1:]) > 0.99        # the rest are W₀'s own directions
    assert report["effective_rank"] == pytest.approx(1.0)   # ΔW has one singular value
    assert report["spectral_norm"] == pytest.approx(100.0)


def test_a_small_perturbation_of_w_has_no_intruders():
    w0, _, _ = base_matrix()
    g = torch.Generator().manual_seed(3)
    noise = 1e-3 * torch.randn(w0.shape, generator=g, dtype=torch.float64)
    assert lorakit.intruder_dimensions(w0, w0 + noise) == 0
    assert lorakit.intruder_dimensions(w0, w0 + noise, k=16, threshold=0.9) == 0


def test_intruders_are_counted_on_the_left_singular_vectors_as_the_authors_do():
    # W = W0 H, H the 4 × 4 Hadamard matrix / 2 (orthogonal, entries ±1/2): W Wᵀ = W0², so W's
    # left singular vectors are W0's (e_i, |cos| 1: no intruder) while its right ones are
    # H's columns, whose |cos| with every e_j is 1/2: all 4 would be intruders at ε = 0.6
    w0 = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))
    h = torch.tensor([[1.0, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2
    w = w0 @ h
    assert lorakit.intruder_dimensions(w0, w, k=4, threshold=0.6) == 0
    assert lorakit.intruder_dimensions(w0.T, w.T, k=4, threshold=0.6) == 4
    assert matrix_report(w0.T, w.T, k=4)["max_similarity"] == pytest.approx([0.5] * 4)


def test_effective_rank_of_r_equal_singular_values_is_r():
    assert effective_rank(torch.diag(torch.tensor([2.0, 2.0, 2.0, 0.0]))) == pytest.approx(3.0)
    assert effective_rank(torch.zeros(3, 3)) == 0.0


def test_compare_weights_finds_the_matrix_full_fine_tuning_changed():
    w0, u, v = base_matrix()
    base = {"a.weight": w0.float(), "b.weight": w0.float().T.contiguous(), "a.bias": torch.ones(20)}
    tuned = {"a.weight": (w0 + 100.0 * torch.outer(u[:, 16], v[:, -1])).float(),
             "b.weight": w0.float().T.contiguous(), "a.bias": torch.zeros(20)}
    report = lorakit.compare_weights(base, tuned)
    assert {r["module"]: r["intruders"] for r in report["modules"]} == {"a.weight": 1,
                                                                        "b.weight": 0}
    assert report["total_intruders"] == 1


@pytest.fixture
def files(tmp_path, tiny_bert):
    """A LoRA adapter whose first query update is a big rank-1 direction, and its base."""
    model = tiny_bert()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=2, method="allora",
                                                        targets=["*.query", "*.value"]))
    with torch.no_grad():
        for p in adapters.parameters():                 # small updates: no intruders
            p.normal_(std=1e-3)
        # ΔW = 3600 u vᵀ with u, v the normalised sums of W₀'s singular vectors: |cos| of u
        # with each of W₀'s 32 left singular vectors is 1/sqrt(32) ≈ 0.18 < 0.5
        query = adapters.layers["bert.encoder.layer.0.attention.self.query"]
        u0, _, v0h = torch.linalg.svd(query.base.weight)
        first = query.variants["default"]
        first.lora_B[:, 0] = u0.sum(dim=1) / 32 ** 0.5 * 60
        first.lora_A[0] = v0h.sum(dim=0) / 32 ** 0.5 * 60
    adapters.save(tmp_path / "a.safetensors")
    adapters.detach()
    save_file({k: t.contiguous() for k, t in model.state_dict().items()},
              str(tmp_path / "base.safetensors"))
    other = tiny_bert(hidden=48)
    save_file({k: t.contiguous() for k, t in other.state_dict().items()},
              str(tmp_path / "other.safetensors"))
    return tmp_path


def test_analyze_adapter_counts_per_matrix(files):
    report = analyze_adapter(files / "a.safetensors", files / "base.safetensors")
    rows = {r["module"]: r for r in report["modules"]}
    assert len(rows) == 4 and report["method"] == "allora" and report["k"] == 10
    big = rows["bert.encoder.layer.0.attention.self.query"]
    assert big["intruders"] == 1 and big["effective_rank"] < 1.01
    assert all(r["intruders"] == 0 for m, r in rows.items() if m != big["module"])


def test_cli_analyze_prints_json_a_table_and_a_png(files, capsys):
    code, out, err = lorakit_cli(capsys, "adapter", "analyze", files / "a.safetensors", "--base",
                                 files / "base.safetensors", "--json", "--png",
                                 files / "chart.png")
    assert code == 0, err
    report = json.loads(out)
    assert report["total_intruders"] == 1 and len(report["modules"]) == 4
    assert (files / "chart.png").stat().st_size > 1000
    _, table, _ = lorakit_cli(capsys, "adapter", "analyze", files / "a.safetensors", "--base",
                              files / "base.safetensors")
    assert "intruders" in table and "1 intruder dimensions in 4 matrices" in table


def test_cli_analyze_against_another_base_is_one_error_line_and_exit_2(files, capsys):
    for args in (["--base", files / "other.safetensors"],
                 ["--base", files / "base.safetensors", "--prefix", "model."]):
        code, _, err = lorakit_cli(capsys, "adapter", "analyze", files / "a.safetensors", *args)
        assert code == 2
        assert err.startswith("lorakit: error:") and "another base model" in err
        assert len(err.strip().splitlines()) == 1


def test_adapter_help_describes_merge_and_analyze(capsys):
    with pytest.raises(SystemExit):
        main(["adapter", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "merge fold an adapter" in out and "W + dW written" in out
    assert "analyze intruder dimensions" in out and "writes nothing unless --png" in out
