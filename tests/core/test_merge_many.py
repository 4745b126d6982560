"""Merging several adapters into one: the unit properties, LoRA-LEGO, PEFT's merges, refusals."""
import math
import sys

import pytest
import torch

import lorakit
from lorakit.cli import main
from lorakit.compose.merge_many import (
    PEFT_METHODS,
    concat_factors,
    lego_factors,
    lowrank_norm,
    merge_adapters,
)
from lorakit.io.adapter_file import layer_entries, read_adapter
from lorakit.variants import variant_named

QV = ["*.query", "*.value"]


@pytest.fixture
def make(tmp_path, tiny_bert, randomise):
    """An adapter file with random (non-zero) tensors on the tiny BERT."""
    def build(name, rank=4, seed=0, targets=QV, method="lora", hidden=32, saved=()):
        model = tiny_bert(hidden=hidden)
        adapters = lorakit.attach(model, lorakit.LoRAConfig(
            rank=rank, alpha=2 * rank, targets=list(targets), method=method,
            modules_to_save=list(saved)))
        randomise(adapters.parameters(), seed=seed)
        return adapters.save(tmp_path / f"{name}.safetensors")
    return build


def deltas(path) -> dict[str, torch.Tensor]:
    """Each module's ΔW (out × in) from an adapter file, through its method's own maths."""
    meta, tensors = read_adapter(path)
    config = lorakit.LoRAConfig.from_dict(meta["config"])
    cls = variant_named(config.method)
    return {p: kind.to_matrix(cls.file_delta(tensors, p, kind, shape, cls.scale_for(config)))
            for p, kind, shape in layer_entries(meta)}


def summed(paths, weights=None) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path, w in zip(paths, weights or [1.0] * len(paths)):
        for p, d in deltas(path).items():
            out[p] = out.get(p, 0) + w * d
    return out


def max_diff(merged, expected) -> float:
    assert set(merged.meta["kinds"]) == set(expected)
    return max((merged.delta(p) - d).abs().max().item() for p, d in expected.items())


def random_pool(sizes, seed=0, n_in=12, n_out=10):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(r, n_in, generator=g), torch.randn(n_out, r, generator=g))
            for r in sizes]


# --- the two unit properties ----------------------------------------------------------
def test_permuting_a_loras_ranks_keeps_its_update_and_lego_ignores_unit_and_input_order():
    pool = random_pool([4, 4, 3])
    a, b = pool[0]
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(b[:, perm] @ a[perm], b @ a, atol=1e-6)
    shuffled = [pool[2], (a[perm], b[:, perm]), pool[1]]
    one_a, one_b, _ = lego_factors(pool, k=4)
    two_a, two_b, _ = lego_factors(shuffled, k=4)
    assert (one_b @ one_a - two_b @ two_a).abs().max().item() <= 1e-5


def test_concatenating_loras_along_the_rank_equals_summing_their_updates():
    pool = random_pool([4, 2, 3])
    a, b = concat_factors(pool)
    assert a.shape[0] == b.shape[1] == 9
    assert (b @ a - sum(pb @ pa for pa, pb in pool)).abs().max().item() <= 1e-5


def test_concat_of_files_is_the_weighted_sum_of_their_updates(make):
    files = [make("a", seed=1), make("b", seed=2), make("c", seed=3)]
    merged = merge_adapters(files, method="concat", weights=[1.0, 0.5, 2.0])
    assert merged.rank == 12 and merged.meta["config"]["alpha"] == 12
    assert max_diff(merged, summed(files, [1.0, 0.5, 2.0])) <= 1e-5


def test_concat_pads_different_ranks_and_targets_to_one_rank_exactly(make):
    files = [make("a", rank=2, seed=1), make("b", rank=4, seed=2, targets=["*.query"]),
             make("c", rank=3, seed=3, targets=["*.value", "*.key"])]
    merged = merge_adapters(files, method="concat")
    # query: 2 + 4, value: 2 + 3, key: 3 -> padded with zero ranks to the largest, 6
    assert merged.rank == 6
    assert max_diff(merged, summed(files)) <= 1e-5
    lego = merge_adapters(files, method="lego", k=4)
    assert lego.rank == 4 and set(lego.meta["kinds"]) == set(merged.meta["kinds"])


def test_methods_that_are_plain_products_merge_through_the_protocol(make):
    files = [make("s2", method="s2lora", seed=1), make("ffa", method="ffa_lora", seed=2),
             make("plain", seed=3)]
    merged = merge_adapters(files, method="concat")
    assert max_diff(merged, summed(files)) <= 1e-5


# --- LoRA-LEGO ------------------------------------------------------------------------
def test_lego_at_or_above_the_total_rank_is_concatenation_exactly(make):
    files = [make("a", rank=2, seed=1), make("b", rank=3, seed=2)]
    expected = summed(files)
    for k, target in ((5, "sum"), (9, "none")):
        merged = merge_adapters(files, method="lego", k=k, output_norm=target)
        assert max_diff(merged, expected) <= 1e-5


def test_lego_at_the_total_rank_with_the_mean_target_is_concatenation_scaled_down():
    pool = random_pool([2, 3])
    a, b, _ = lego_factors(pool, k=5, output_norm="mean")
    exact = sum(pb @ pa for pa, pb in pool)
    mean = sum(float((pb @ pa).norm()) for pa, pb in pool) / 2
    assert (b @ a - exact * (mean / float(exact.norm()))).abs().max().item() <= 1e-5


def test_lego_of_identical_loras_at_their_rank_is_their_sum():
    pool = random_pool([4])
    a, b, labels = lego_factors(pool * 3, k=4, output_norm="sum")
    assert a.shape[0] == 4 and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert (b @ a - 3 * (pool[0][1] @ pool[0][0])).abs().max().item() <= 1e-4


def test_parameter_reweighting_gives_each_centroid_the_mean_size_of_its_units():
    pool = random_pool([4, 4, 4, 4])
    a, b, labels = lego_factors(pool, k=5, output_norm="none")
    units_a, units_b = concat_factors(pool)
    size = units_a.norm(dim=1) * units_b.norm(dim=0)
    assert a.shape[0] == 5 and set(labels.tolist()) == set(range(5))
    for c in range(5):
        assert math.isclose(float(a[c].norm() * b[:, c].norm()),
                            float(size[labels == c].mean()), rel_tol=1e-5)


@pytest.mark.parametrize("target", ["sum", "mean"])
def test_output_reweighting_keeps_the_inputs_norm(target):
    pool = random_pool([4, 2, 4])
    a, b, _ = lego_factors(pool, k=3, output_norm=target)
    norms = [lowrank_norm(pa, pb) for pa, pb in pool]
    want = lowrank_norm(*concat_factors(pool)) if target == "sum" else sum(norms) / 3
    assert math.isclose(float((b @ a).norm()), want, rel_tol=1e-5)


def test_lego_file_loads_onto_the_base_and_gives_the_merged_update(make, tiny_bert, tmp_path):
    files = [make("a", seed=1), make("b", seed=2), make("c", seed=3)]
    merged = merge_adapters(files, method="lego", k=4, out=tmp_path / "m.safetensors")
    ids = torch.randint(0, 60, (2, 9))
    by_file = tiny_bert()
    lorakit.load_adapter(by_file, tmp_path / "m.safetensors")
    direct = tiny_bert()
    merged.load(direct)
    assert (by_file(input_ids=ids).logits - direct(input_ids=ids).logits).abs().max() <= 1e-6
    assert merged.meta["extra"]["merge"]["k"] == 4


def test_a_merged_file_exports_to_peft_with_the_same_logits(make, tiny_bert, tmp_path):
    peft = pytest.importorskip("peft")
    files = [make("a", rank=2, seed=1), make("b", seed=2)]
    merge_adapters(files, method="lego", k=3, out=tmp_path / "m.safetensors")
    ids = torch.randint(0, 60, (2, 9))
    ours = tiny_bert()
    lorakit.load_adapter(ours, tmp_path / "m.safetensors")
    lorakit.export_peft(tmp_path / "m.safetensors", tmp_path / "peft")
    theirs = peft.PeftModel.from_pretrained(tiny_bert(), str(tmp_path / "peft")).eval()
    assert (ours(input_ids=ids).logits - theirs(input_ids=ids).logits).abs().max() <= 1e-5


def test_handles_merge_each_of_their_named_adapters(make, tiny_bert):
    model = tiny_bert()
    lorakit.load_adapter(model, make("a", seed=1), name="a")
    handle = lorakit.load_adapter(model, make("b", seed=2), name="b")
    merged = merge_adapters(handle, method="concat")
    assert merged.rank == 8 and merged.meta["extra"]["merge"]["sources"] == [
        "adapter 'a'", "adapter 'b'"]


# --- PEFT's merges, brought back through import_peft ----------------------------------

@pytest.mark.parametrize("combination", PEFT_METHODS)
def test_a_peft_merge_imports_with_the_same_update_as_peft_gives(combination, make, tiny_bert,
                                                              tmp_path):
    peft = pytest.importorskip("peft")
    files = [make("a", seed=1), make("b", seed=2), make("c", seed=3)]
    weights = [0.7, 1.0, 0.4]
    ours = merge_adapters(files, method=f"peft-{combination}", weights=weights, k=6,
                          density=0.6, seed=5)
    names = []
    for i, f in enumerate(files):
        lorakit.export_peft(f, tmp_path / f"peft{i}")
        names.append(f"p{i}")
    model = peft.PeftModel.from_pretrained(tiny_bert(), str(tmp_path / "peft0"),
                                           adapter_name="p0")
    for i in (1, 2):
        model.load_adapter(str(tmp_path / f"peft{i}"), adapter_name=f"p{i}")
    options = {"svd_rank": 6} if combination.endswith("svd") else {}
    if combination not in ("linear", "cat", "svd"):
        options["density"] = 0.6
    torch.manual_seed(5)     # DARE drops at random: the same draws as merge_adapters(seed=5)
    model.add_weighted_adapter(names, weights, "merged", combination_type=combination,
                               **options)
    expected = {}
    for path in ours.meta["kinds"]:
        layer = model.base_model.model.get_submodule(path)
        expected[path] = layer.get_delta_weight("merged")
    assert ours.rank == (12 if combination == "cat" else 6 if combination.endswith("svd")
                         else 4)
    assert max_diff(ours, expected) <= 1e-5


def test_peft_merges_gpt2_conv1d_and_embedding_layers_on_their_stand_ins(tmp_path, randomise):
    pytest.importorskip("peft")
    from transformers import GPT2Config, GPT2Model

    files = []
    for seed, rank in ((1, 2), (2, 3)):
        torch.manual_seed(0)
        model = GPT2Model(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2,
                                     n_positions=16))
        adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=rank, alpha=4,
                                                            targets=["*.c_attn", "wte"]))
        randomise(adapters.parameters(), seed=seed)
        files.append(adapters.save(tmp_path / f"g{seed}.safetensors"))
    merged = merge_adapters(files, method="peft-cat")
    assert merged.meta["kinds"] == {"wte": "embedding", "h.0.attn.c_attn": "conv1d"}
    assert merged.rank == 5 and max_diff(merged, summed(files)) <= 1e-5


def test_peft_merges_that_need_one_rank_refuse_mixed_ranks_by_name(make):
    with pytest.raises(lorakit.LoraKitError, match="one rank.*peft-cat"):
        merge_adapters([make("a", rank=2), make("b", rank=4)], method="peft-ties")


# --- refusals ---------------------------------------------------------------------------
def test_no_adapters_is_refused():
    with pytest.raises(lorakit.LoraKitError, match="at least one adapter"):
        merge_adapters([], method="concat")


def test_k_below_one_and_unknown_methods_are_refused(make):
    with pytest.raises(lorakit.LoraKitError, match="k .*>= 1"):
        merge_adapters([make("a")], method="lego", k=0)
    with pytest.raises(lorakit.LoraKitError, match="unknown; choose one of lego, concat"):
        merge_adapters([make("a")], method="average")
    with pytest.raises(lorakit.LoraKitError, match="one weight per adapter"):
        merge_adapters([make("a"), make("b")], method="concat", weights=[1.0])


def test_adapters_for_another_base_are_refused_naming_both_files_and_the_module(make,
                                                                               tiny_bert):
    a, b = make("a"), make("small", hidden=16)
    with pytest.raises(lorakit.AdapterMismatchError,
                       match=r"small.safetensors and .*a.safetensors were made for different "
                             r"base models: module 'bert.encoder.layer.0.attention.self.query'"):
        merge_adapters([a, b], method="lego")
    with pytest.raises(lorakit.AdapterMismatchError, match="another base model"):
        merge_adapters([a], method="concat").load(tiny_bert(hidden=16))
    with pytest.raises(lorakit.AdapterMismatchError, match=r"small.safetensors was made for "
                                                           "another base model"):
        merge_adapters([b], method="concat", base=tiny_bert())


def test_dora_is_refused_because_it_has_no_rank_one_units(make):
    dora = make("d", method="dora")
    with pytest.raises(lorakit.LoraKitError, match=r"d.safetensors: method 'dora' is not a "
                                                   r"plain product.*depends on the base "
                                                   r"weight.*lorakit adapter merge"):
        merge_adapters([make("a"), dora], method="concat")


def test_a_mixture_is_refused_without_being_sent_to_fold_into_the_base(make):
    moe = make("m", method="mixture")
    with pytest.raises(lorakit.LoraKitError, match=r"m.safetensors: method 'mixture' is not "
                                                   r"a plain product.*routing") as err:
        merge_adapters([make("a"), moe], method="concat")
    assert "adapter merge" not in str(err.value)


def test_saved_modules_are_refused_unless_dropped(make):
    files = [make("a", saved=["classifier"], seed=1), make("b", saved=["classifier"], seed=2)]
    with pytest.raises(lorakit.LoraKitError, match=r"a.safetensors trains \['classifier'\].*"
                                                   "drop_saved=True"):
        merge_adapters(files, method="concat")
    merged = merge_adapters(files, method="concat", drop_saved=True)
    assert not any(k.startswith("classifier") for k in merged.tensors)
    assert merged.meta["config"]["modules_to_save"] == []
    assert max_diff(merged, summed(files)) <= 1e-5


def test_lego_without_scikit_learn_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    with pytest.raises(lorakit.LoraKitError, match=r"lorakit\[merge\]"):
        lego_factors(random_pool([4, 4]), k=2)


# --- the CLI ------------------------------------------------------------------------------
def test_cli_merge_many_writes_an_adapter_file_that_loads(make, tmp_path, capsys):
    files = [make("a", seed=1), make("b", rank=2, seed=2)]
    out = tmp_path / "m.safetensors"
    assert main(["adapter", "merge-many", *map(str, files), "--method", "concat",
                 "--weights", "1", "0.5", "--out", str(out)]) == 0
    assert "rank 6" in capsys.readouterr().out
    meta, _ = read_adapter(out)
    assert meta["extra"]["merge"]["method"] == "concat"
    assert main(["adapter", "merge-many", *map(str, files), "--k", "3", "--out", str(out)]) == 0
    assert read_adapter(out)[0]["config"]["rank"] == 3


def test_cli_merge_many_refusal_is_one_line_naming_the_file(make, tmp_path, capsys):
    files = [make("a"), make("d", method="dora")]
    assert main(["adapter", "merge-many", *map(str, files), "--out",
                 str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorakit: error:") and "d.safetensors" in err
    assert not (tmp_path / "m.safetensors").exists()


def test_cli_help_tells_merge_from_merge_many(capsys):
    with pytest.raises(SystemExit):
        main(["adapter", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "merge fold an adapter into base WEIGHTS" in out and "see merge-many" in out
    assert "combine SEVERAL adapters into ONE adapter file" in out
    with pytest.raises(SystemExit):
        main(["adapter", "merge-many", "--help"])
    out = capsys.readouterr().out
    for option in ("--method", "--out", "--k", "--weights", "--seed", "--n-init",
                   "--output-norm", "--density", "--drop-saved"):
        assert option in out


def test_lego_with_fewer_distinct_units_than_k_keeps_only_real_clusters():
    pool = random_pool([2])
    a, b, labels = lego_factors(pool * 3, k=4, output_norm="sum")   # 6 units, 2 distinct
    assert a.shape[0] <= 4 and not torch.isnan(a).any() and not torch.isnan(b).any()
    assert (b @ a - 3 * (pool[0][1] @ pool[0][0])).abs().max().item() <= 1e-4
