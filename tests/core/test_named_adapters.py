"""Many named adapters on one model: list, activate (with weights), delete, merge each,
route each row of a batch to its own adapter; PEFT parity for two adapters."""
import pytest
import torch
from torch import nn

import lorakit

peft = pytest.importorskip("peft")



@pytest.fixture
def two(randomise, tiny_bert):
    """A BERT with adapter 'a' (LoRA r=4 on q, v) and 'b' (S2-LoRA r=2 on q, k)."""
    model = tiny_bert()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=4, targets=["*.query", "*.value"]),
                              name="a")
    lorakit.attach(model, lorakit.LoRAConfig(rank=2, method="s2lora",
                                             targets=["*.query", "*.key"]), name="b")
    randomise(adapters.parameters("a"), seed=1)
    randomise(adapters.parameters("b"), seed=2)
    return model, adapters


def logits(model, ids):
    return model(input_ids=ids).logits


def alone(tiny_bert, adapters, name, ids, tmp_path):
    """The logits of adapter `name` saved and loaded alone onto a fresh base."""
    adapters.save(tmp_path / f"{name}.safetensors", name=name)
    model = tiny_bert()
    lorakit.load_adapter(model, tmp_path / f"{name}.safetensors")
    return logits(model, ids)


def test_a_second_attach_adds_a_named_adapter_of_another_method_and_rank(two):
    model, adapters = two
    assert adapters.names == ["a", "b"] and lorakit.adapters_of(model) is adapters
    q = model.bert.encoder.layer[0].attention.self.query
    assert set(q.variants) == {"a", "b"}
    assert isinstance(q.variants["a"], lorakit.LoRA) and q.variants["a"].rank == 4
    assert isinstance(q.variants["b"], lorakit.S2LoRA) and q.variants["b"].rank == 2
    assert len(adapters.layers) == 6           # q in both, v only in a, k only in b
    assert adapters.active == {"a": 1.0}       # the first is active, later ones are not
    assert adapters.trainable_count() == adapters.trainable_count("a") + \
        adapters.trainable_count("b")


def test_each_active_choice_equals_that_adapter_alone(two, tiny_bert, tmp_path):
    model, adapters = two
    ids = torch.randint(0, 60, (2, 9))
    base = logits(tiny_bert(), ids)
    la, lb = (alone(tiny_bert, adapters, n, ids, tmp_path) for n in "ab")
    with torch.no_grad():
        adapters.set_active("a")
        assert torch.allclose(logits(model, ids), la, atol=1e-6)
        adapters.set_active("b")
        assert torch.allclose(logits(model, ids), lb, atol=1e-6)
        adapters.set_active(None)
        assert torch.allclose(logits(model, ids), base, atol=1e-6)
        with adapters.disabled():
            assert torch.allclose(logits(model, ids), base, atol=1e-6)


def test_several_active_adapters_add_their_weighted_updates(two):
    model, adapters = two
    ids = torch.randint(0, 60, (2, 9))
    x = torch.randn(3, 32)
    q = model.bert.encoder.layer[0].attention.self.query
    with torch.no_grad():
        adapters.set_active({"a": 0.5, "b": -2.0})
        expected = q.base(x) + 0.5 * (x @ q.variants["a"].delta_weight().T) \
            - 2.0 * (x @ q.variants["b"].delta_weight().T)
        assert torch.allclose(q(x), expected, atol=1e-5)
        unmerged = logits(model, ids)
        adapters.merge()                      # each with its weight
        assert torch.allclose(logits(model, ids), unmerged, atol=1e-5)
        with pytest.raises(lorakit.LoraKitError, match="unmerge"):
            adapters.set_active("a")
        adapters.unmerge()


def test_merge_and_unmerge_work_per_adapter(two):
    model, adapters = two
    ids = torch.randint(0, 60, (2, 9))
    q = model.bert.encoder.layer[0].attention.self.query
    w0 = q.base.weight.detach().clone()
    with torch.no_grad():
        adapters.set_active(["a", "b"])
        both = logits(model, ids)
        adapters.merge("b")
        assert q.merged == {"b": 1.0}
        assert torch.allclose(q.base.weight, w0 + q.variants["b"].delta_weight(), atol=1e-6)
        assert torch.allclose(logits(model, ids), both, atol=1e-5)
        adapters.unmerge("b")
        assert torch.allclose(q.base.weight, w0, atol=1e-6)
    with pytest.raises(lorakit.LoraKitError, match="'b' is not active"):
        adapters.set_active("a")
        adapters.merge("b")


def test_delete_removes_one_adapter_and_restores_modules_no_adapter_uses(two, tiny_bert,
                                                                         tmp_path):
    model, adapters = two
    ids = torch.randint(0, 60, (2, 9))
    la = alone(tiny_bert, adapters, "a", ids, tmp_path)
    adapters.delete("b")
    assert adapters.names == ["a"]
    layer0 = model.bert.encoder.layer[0].attention.self
    assert isinstance(layer0.key, nn.Linear) and not isinstance(layer0.key, lorakit.LoRALayer)
    assert set(layer0.query.variants) == {"a"}
    assert torch.allclose(logits(model, ids), la, atol=1e-6)
    adapters.delete("a")
    assert lorakit.adapters_of(model) is None
    assert not any(isinstance(m, lorakit.LoRALayer) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_an_idle_named_adapter_costs_its_own_tensors_and_no_copy_of_the_base(two,
                                                                            tiny_bert):
    model, adapters = two
    base_total = sum(p.numel() for p in tiny_bert().parameters())
    assert adapters.total_count() - base_total == adapters.trainable_count()


def test_load_adapter_adds_under_a_name_and_a_refused_load_keeps_the_others(two, tiny_bert,
                                                                           tmp_path):
    model, adapters = two
    adapters.save(tmp_path / "a.safetensors", name="a")
    lorakit.load_adapter(model, tmp_path / "a.safetensors", name="a2")
    assert adapters.names == ["a", "b", "a2"]
    for (k, x), (k2, y) in zip(adapters.state_dict("a").items(),
                               adapters.state_dict("a2").items()):
        assert k == k2 and torch.equal(x, y)
    other = lorakit.attach(tiny_bert(hidden=64), lorakit.LoRAConfig(targets=["*.query"]))
    other.save(tmp_path / "wide.safetensors")
    with pytest.raises(lorakit.AdapterMismatchError):
        lorakit.load_adapter(model, tmp_path / "wide.safetensors", name="wide")
    assert adapters.names == ["a", "b", "a2"]


def test_an_ambiguous_call_asks_for_the_adapter_name(two, tmp_path):
    _, adapters = two
    with pytest.raises(lorakit.LoraKitError, match=r"carries adapters \['a', 'b'\]: name"):
        adapters.save(tmp_path / "x.safetensors")
    with pytest.raises(lorakit.LoraKitError, match="no adapter named 'c'"):
        adapters.set_active("c")
    with pytest.raises(lorakit.LoraKitError, match="without '.'"):
        lorakit.attach(two[0], lorakit.LoRAConfig(targets=["*.query"]), name="x.y")


def test_two_named_adapters_export_to_peft_and_load_there_with_equal_logits(two, tiny_bert,
                                                                           tmp_path):
    model, adapters = two
    ids = torch.randint(0, 60, (2, 9))
    out = lorakit.export_peft(adapters, tmp_path / "peft")
    assert (out / "a" / "adapter_config.json").is_file()
    assert (out / "b" / "adapter_config.json").is_file()
    peft_model = peft.PeftModel.from_pretrained(tiny_bert(), str(out / "a"), adapter_name="a")
    peft_model.load_adapter(str(out / "b"), adapter_name="b")
    peft_model.eval()
    with torch.no_grad():
        for name in "ab":
            adapters.set_active(name)
            peft_model.set_adapter(name)
            assert (logits(model, ids) - logits(peft_model, ids)).abs().max() <= 1e-5


def test_a_peft_model_with_two_adapters_imports_both(tiny_bert, tmp_path):
    ids = torch.randint(0, 60, (2, 9))
    peft_model = peft.get_peft_model(tiny_bert(), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False))
    peft_model.add_adapter("child", peft.LoraConfig(r=2, lora_alpha=3, target_modules=["key"],
                                                    init_lora_weights=False))
    peft_model.eval()
    theirs = {}
    with torch.no_grad():
        for name in ("default", "child"):
            peft_model.set_adapter(name)
            theirs[name] = logits(peft_model, ids)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    model = tiny_bert()
    adapters = lorakit.import_peft(tmp_path / "peft", model)
    assert adapters.names == ["default", "child"]
    with torch.no_grad():
        for name in ("default", "child"):
            adapters.set_active(name)
            assert (logits(model, ids) - theirs[name]).abs().max() <= 1e-5
