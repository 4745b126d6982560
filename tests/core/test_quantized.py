"""Quantized bases: `lorakit.quantize`, `LoRAConfig.base_quantization`, QLoRA training,
the adapter file's precision record, merging, PEFT and the serving pool on them."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import lorakit
from lorakit.layers.quantized import dense_linear
from lorakit.serving import AdapterPool, AdapterUnavailableError
from lorakit.training.gradient_init import base_gradients

pytest.importorskip("bitsandbytes")
pytest.importorskip("hqq")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

SCHEMES = ["nf4", "fp4", "int2", "int3", "int4", "int8"]
# ‖Q(W) − W‖ / ‖W‖ of a 64 × 128 nn.Linear init, measured: nf4 0.092, fp4 0.112,
# int2 0.307, int3 0.132, int4 0.062, int8 0.0036; the bounds leave room for other seeds
WEIGHT_ERROR = {"nf4": 0.12, "fp4": 0.14, "int2": 0.4, "int3": 0.17, "int4": 0.08,
                "int8": 0.006}


def mlp(seed=0, width=64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 8))


def quantized_mlp(spec="nf4", seed=0):
    model = mlp(seed)
    lorakit.quantize(model, spec, keep=[])
    return model


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=128,
                                  max_position_embeddings=32, num_labels=2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(cfg).eval()


def randomise(adapters, seed=0, std=0.3, name=None):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters.parameters(name):
            p.copy_(torch.randn(p.shape, generator=g) * std)


# --- the quantized layer ---------------------------------------------------------------
@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_quantized_layer_is_the_dequantized_matmul_and_close_to_the_weight(scheme):
    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    layer = lorakit.QuantizedLinear.from_linear(linear, scheme)
    x = torch.randn(16, 128)
    expected = F.linear(x, layer.dequantize(), layer.bias)
    assert torch.allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
    error = (layer.dequantize() - linear.weight).norm() / linear.weight.norm()
    assert 0 < error < WEIGHT_ERROR[scheme]
    # bytes: the codes at the scheme's bits, plus one scale (and zero) per group of 64
    assert layer.nbytes() < linear.weight.nbytes * (layer.spec.bits + 1.5) / 32


def test_gradients_reach_only_the_adapter_and_the_codes_never_change():
    model = quantized_mlp()
    codes = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    adapters = lorakit.attach(model, lorakit.LoRAConfig(targets=["0", "2"], rank=4))
    opt = torch.optim.AdamW(adapters.parameters(), lr=1e-2)
    x, y = torch.randn(8, 64), torch.randn(8, 8)
    for _ in range(3):
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".variants.default.lora_" in n for n in trained)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trained)
    after = {k.replace(".base.", "."): v for k, v in adapters.detach().state_dict().items()}
    assert set(after) == set(codes)
    assert all(torch.equal(codes[k], after[k]) for k in codes if torch.is_tensor(after[k]))


@pytest.mark.parametrize("scheme", ["nf4", "int4"])
def test_qlora_training_lowers_the_loss_on_a_tiny_task(scheme):
    """Fit the outputs of the full-precision base moved by a random rank-4 update."""
    teacher = mlp(seed=0)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        teacher[0].weight += torch.randn(64, 4, generator=g) @ torch.randn(4, 64, generator=g) * 0.1
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = teacher(x)
    model = mlp(seed=0)
    adapters = lorakit.attach(model, lorakit.LoRAConfig(targets=["0", "2"], rank=4,
                                                        base_quantization=scheme))
    assert {layer.kind.name for layer in adapters.layers.values()} == {"quantized_linear"}
    opt = torch.optim.AdamW(adapters.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


# --- quantize and base_quantization ----------------------------------------------------
def test_quantize_reports_bytes_and_what_it_kept_and_why():
    model = tiny_bert()
    model.bert.encoder.layer[0].output.dense = nn.Linear(100, 64)    # 100 % 64 != 0
    report = lorakit.quantize(model, "nf4")
    linears = [p for p, m in tiny_bert().named_modules() if isinstance(m, nn.Linear)]
    assert set(report.quantized) | set(report.kept) == set(linears)
    assert "classifier" in report.kept and "output head" in report.kept["classifier"]
    assert "in_features=100" in report.kept["bert.encoder.layer.0.output.dense"]
    assert isinstance(model.bert.encoder.layer[1].attention.self.query, lorakit.QuantizedLinear)
    assert isinstance(model.classifier, nn.Linear)
    q = report.quantized["bert.encoder.layer.1.attention.self.query"]
    assert q.shape == (64, 64) and q.bytes_before == 64 * 64 * 4
    assert report.bytes_before == sum(m.bytes_before for m in report.quantized.values())
    assert 0.1 < report.ratio < 0.2       # 4-bit codes + double-quantized absmax, vs fp32
    assert "| **total**" in report.table() and "nf4-g64" in str(report)

    again = lorakit.quantize(model, "int4", targets=["*.query", "word_embeddings"])
    assert not again.quantized
    assert "already quantized (nf4-g64)" in again.kept["bert.encoder.layer.0.attention.self.query"]
    assert "not an nn.Linear" in again.kept["bert.embeddings.word_embeddings"]
    with pytest.raises(lorakit.TargetNotFoundError, match="'nope'"):
        lorakit.quantize(model, "int4", targets=["nope"])
    adapted = tiny_bert()
    lorakit.attach(adapted, lorakit.LoRAConfig(targets=["*.query"]))
    report = lorakit.quantize(adapted, "nf4", targets=["*.query"])
    assert not report.quantized and len(report.kept) == 2
    assert all("carries lorakit adapters" in why for why in report.kept.values())
    with pytest.raises(lorakit.LoraKitError, match="scheme"):
        lorakit.quantize(model, "int5")


def test_base_quantization_quantizes_the_targeted_linears_only():
    model = tiny_bert()
    config = lorakit.LoRAConfig(targets=["*.query", "*.value"], base_quantization="INT3-g32",
                                modules_to_save=["classifier"])
    assert config.base_quantization == "int3-g32"
    assert "base_quantization" not in config.to_dict()
    adapters = lorakit.attach(model, config)
    kinds = {p: layer.kind.name for p, layer in adapters.layers.items()}
    assert set(kinds.values()) == {"quantized_linear"} and len(kinds) == 4
    assert isinstance(model.bert.encoder.layer[0].attention.self.key, nn.Linear)
    assert all(str(layer.base.spec) == "int3-g32" for layer in adapters.layers.values())
    with pytest.raises(lorakit.LoraKitError, match="already quantized as int3-g32"):
        lorakit.attach(model, lorakit.LoRAConfig(targets=["*.query"], base_quantization="nf4"),
                       name="other")
    with pytest.raises(lorakit.LoraKitError, match="already carries adapters"):
        fresh = tiny_bert()
        lorakit.attach(fresh, lorakit.LoRAConfig(targets=["*.query"]))
        lorakit.attach(fresh, lorakit.LoRAConfig(targets=["*.query"], base_quantization="nf4"),
                       name="q")
    with pytest.raises(lorakit.LoraKitError, match="quantization"):
        lorakit.LoRAConfig(base_quantization="nf5")


# --- the adapter file ------------------------------------------------------------------
def test_a_qlora_adapter_round_trips_and_records_its_base_precision(tmp_path):
    model = tiny_bert()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(targets=["*.query", "*.value"],
                                                        base_quantization="nf4"))
    randomise(adapters)
    path = adapters.save(tmp_path / "q.safetensors")
    meta, _ = lorakit.read_adapter(path)
    assert set(meta["kinds"].values()) == {"linear"}
    record = meta["quantization"]["bert.encoder.layer.0.attention.self.query"]
    assert record["scheme"] == "nf4-g64" and record["library"] == "bitsandbytes"
    assert record["version"] == "0.50.2"
    ids = torch.randint(0, 60, (3, 10))
    fresh = tiny_bert()
    lorakit.quantize(fresh, "nf4", targets=["*.query", "*.value"])
    loaded = lorakit.load_adapter(fresh, path)
    assert all(torch.equal(a, b) for a, b in zip(adapters.state_dict().values(),
                                                 loaded.state_dict().values()))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, fresh(input_ids=ids).logits)


def test_an_adapter_onto_a_base_of_another_precision_is_refused_by_name(tmp_path):
    model = tiny_bert()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(targets=["*.query"],
                                                        base_quantization="nf4"))
    randomise(adapters)
    qlora = adapters.save(tmp_path / "q.safetensors")
    full = tiny_bert()
    with pytest.raises(lorakit.AdapterMismatchError,
                       match=r"quantized nf4-g64 base but module 'bert\.encoder\.layer\.0\."
                             r"attention\.self\.query' is full precision here.*"
                             r"lorakit\.quantize\(model, 'nf4-g64'\).*allow_other_precision"):
        lorakit.load_adapter(full, qlora)
    assert lorakit.adapters_of(full) is None          # refused before anything changed
    int4 = tiny_bert()
    lorakit.quantize(int4, "int4", targets=["*.query"])
    with pytest.raises(lorakit.AdapterMismatchError, match="is quantized int4-g64 here"):
        lorakit.load_adapter(int4, qlora)
    # the override: a QLoRA adapter onto the full-precision base, to merge it exactly
    loaded = lorakit.load_adapter(full, qlora, allow_other_precision=True)
    loaded.merge()
    assert isinstance(full.bert.encoder.layer[0].attention.self.query.base, nn.Linear)

    plain = tiny_bert()
    plain_path = lorakit.attach(plain, lorakit.LoRAConfig(targets=["*.query"])).save(
        tmp_path / "fp.safetensors")
    quantized = tiny_bert()
    lorakit.quantize(quantized, "nf4")
    with pytest.raises(lorakit.AdapterMismatchError, match="full precision base but module"):
        lorakit.load_adapter(quantized, plain_path)


def test_a_file_without_the_precision_record_still_loads_onto_a_quantized_base(tmp_path):
    """Files written before lorakit kept the record: no check, as before."""
    adapters = lorakit.attach(tiny_bert(), lorakit.LoRAConfig(targets=["*.query"]))
    randomise(adapters)
    path = adapters.save(tmp_path / "a.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["lorakit"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    del meta["quantization"]
    save_file(tensors, tmp_path / "old.safetensors", metadata={"lorakit": json.dumps(meta)})
    model = tiny_bert()
    lorakit.quantize(model, "nf4")
    loaded = lorakit.load_adapter(model, tmp_path / "old.safetensors")
    assert {layer.kind.name for layer in loaded.layers.values()} == {"quantized_linear"}


# --- merging ---------------------------------------------------------------------------
def test_merge_into_a_quantized_base_is_refused_naming_the_module_unless_requantized():
    model = quantized_mlp("int4")
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        # the base's own quantization error (HQQ int4 on this MLP: 9.5 % of the output)
        base_error = (model(x) - mlp()(x)).norm() / mlp()(x).norm()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(targets=["0", "2"], rank=2))
    randomise(adapters, std=0.05)
    with torch.no_grad():
        unmerged = model(x)
        with pytest.raises(lorakit.LoraKitError,
                           match=r"module '0' is quantized \(int4-g64\).*requantize=True"):
            adapters.merge()
        assert not adapters.merged
        adapters.merge(requantize=True)
        merged = model(x)
    # requantizing W + ΔW costs one more quantization error of about the base's own size
    # (measured: 11.9 % against 9.5 %)
    assert (merged - unmerged).norm() / unmerged.norm() < 2 * base_error
    for attempt in (adapters.unmerge, lambda: adapters.delete("default"),
                    lambda: adapters.disabled().__enter__(), adapters.detach):
        with pytest.raises(lorakit.LoraKitError, match="cannot be unmerged"):
            attempt()
    adapters.detach(merge=True, requantize=True)
    assert isinstance(model[0], lorakit.QuantizedLinear)
    with torch.no_grad():
        assert torch.equal(model(x), merged)


# --- the other places that read a base weight ------------------------------------------
def test_a_gradient_init_on_a_quantized_base_sees_the_dequantized_weights_gradient():
    def loss(m, batch):
        return m(batch).pow(2).mean()
    batches = [torch.randn(4, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    model = quantized_mlp()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(targets=["0", "2"], method="lora_ga",
                                                        rank=1))
    dense = nn.Sequential(dense_linear(model[0].base), nn.Tanh(), dense_linear(model[2].base))
    ref = lorakit.attach(dense, lorakit.LoRAConfig(targets=["0", "2"], method="lora_ga",
                                                   rank=1))
    grads, count = base_gradients(model, adapters, batches, loss)
    expected, _ = base_gradients(dense, ref, batches, loss)
    assert count == 2 and all(isinstance(model[i].base, lorakit.QuantizedLinear) for i in (0, 2))
    for path in grads:
        assert grads[path].abs().max() > 0
        assert torch.allclose(grads[path], expected[path], atol=1e-6)


def test_peft_export_and_import_on_a_quantized_base(tmp_path):
    model = tiny_bert()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(targets=["*.query", "*.value"],
                                                        base_quantization="nf4"))
    randomise(adapters)
    out = lorakit.export_peft(adapters, tmp_path / "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(adapters.layers)
    assert not config["fan_in_fan_out"]
    fresh = tiny_bert()
    lorakit.quantize(fresh, "nf4", targets=["*.query", "*.value"])
    lorakit.import_peft(out, fresh)
    ids = torch.randint(0, 60, (2, 9))
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, fresh(input_ids=ids).logits,
                              atol=1e-6)


def tiny_llama(seed=0, quantized=True):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        initializer_range=0.2, eos_token_id=None, bos_token_id=None, pad_token_id=0)
    model = transformers.LlamaForCausalLM(config).eval()
    if quantized:
        lorakit.quantize(model, "nf4")
    return model


def logits(model, ids):
    return model(input_ids=ids).logits


def test_routed_batches_and_the_serving_pool_on_a_quantized_base(tmp_path, monkeypatch):
    ids = torch.randint(1, 96, (4, 6), generator=torch.Generator().manual_seed(0))
    model = tiny_llama()
    assert isinstance(model.lm_head, nn.Linear)                   # the head stays full
    for i, (rank, targets) in enumerate([(2, ["q_proj", "v_proj"]), (4, ["o_proj"])]):
        adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=rank, targets=targets),
                                  name=f"a{i}")
        randomise(adapters, seed=i, name=f"a{i}")
        adapters.save(tmp_path / f"a{i}.safetensors", name=f"a{i}")
    route = torch.tensor([0, 1, -1, 0])
    alone = []
    with torch.no_grad():
        with adapters.route(route):
            routed = logits(model, ids)
        for row, i in zip(ids, route.tolist()):
            adapters.set_active(None if i < 0 else f"a{i}")
            alone.append(logits(model, row[None]))
    assert torch.allclose(routed, torch.cat(alone), atol=1e-5)
    adapters.detach()

    full = lorakit.attach(tiny_llama(quantized=False), lorakit.LoRAConfig(targets=["q_proj"]))
    full.save(tmp_path / "full.safetensors")
    base = tiny_llama()
    pool = AdapterPool(base, tmp_path)
    assert "full precision base" in pool.status("full")
    with pytest.raises(AdapterUnavailableError, match="allow_other_precision"):
        pool.acquire("full")
    calls = []
    real = lorakit.QuantizedLinear.dequantize
    monkeypatch.setattr(lorakit.QuantizedLinear, "dequantize",
                        lambda self: calls.append(1) or real(self))
    slots = [pool.acquire("a0"), pool.acquire("a1")]
    with torch.no_grad(), pool.routed([slots[0], slots[1], -1, slots[0]]):
        served = logits(base, ids)
    assert not calls           # loading and serving never dequantize a base weight
    assert torch.allclose(served, routed, atol=1e-5)
    pool.close()
    assert AdapterPool(base, tmp_path, allow_other_precision=True).status("full") == "idle"


def test_adapter_merge_folds_a_qlora_adapter_into_full_precision_weights_and_says_so(
        tmp_path, capsys):
    from lorakit.cli import main

    full = mlp()
    save_file({k: v.contiguous() for k, v in full.state_dict().items()},
              str(tmp_path / "base.safetensors"))
    model = mlp()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(targets=["0", "2"], rank=2,
                                                        base_quantization="nf4"))
    randomise(adapters, std=0.05)
    adapters.save(tmp_path / "q.safetensors")
    assert main(["adapter", "merge", str(tmp_path / "q.safetensors"),
                 str(tmp_path / "base.safetensors"), str(tmp_path / "merged.safetensors")]) == 0
    assert "trained on a quantized base (nf4-g64)" in capsys.readouterr().out
    reference = lorakit.load_adapter(full, tmp_path / "q.safetensors",
                                     allow_other_precision=True)
    reference.merge()
    with safe_open(str(tmp_path / "merged.safetensors"), framework="pt") as f:
        assert torch.allclose(f.get_tensor("0.weight"), full[0].base.weight, atol=1e-6)


def test_a_failed_attach_puts_the_full_precision_modules_back(monkeypatch):
    model = mlp()
    originals = [model[0], model[2]]
    real = lorakit.LoRA.init_from_weight
    calls = []

    def fail_on_the_second(self, weight):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(self, weight)
    monkeypatch.setattr(lorakit.LoRA, "init_from_weight", fail_on_the_second)
    with pytest.raises(RuntimeError, match="boom"):
        lorakit.attach(model, lorakit.LoRAConfig(targets=["0", "2"], base_quantization="nf4"))
    assert model[0] is originals[0] and model[2] is originals[1]
    assert lorakit.adapters_of(model) is None


@pytest.mark.parametrize(("text", "message"), [
    ("nf5", "write a scheme and an optional group size"),
    ("int4-g48", "use a power of two"),
])
def test_a_quantization_spec_that_cannot_be_read_is_refused_with_what_to_write(text, message):
    with pytest.raises(lorakit.LoraKitError, match=message):
        lorakit.QuantSpec.parse(text)
    with pytest.raises(lorakit.LoraKitError, match="lorakit knows nf4, fp4"):
        lorakit.QuantSpec("int5")


def test_a_linear_whose_inputs_the_group_does_not_divide_is_refused_by_its_width():
    with pytest.raises(lorakit.LoraKitError, match="in_features=96 cannot be quantized in "
                                                   "groups of 64"):
        lorakit.QuantizedLinear.from_linear(nn.Linear(96, 8), "int4")
