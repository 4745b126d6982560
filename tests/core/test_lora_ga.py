"""LoRA-GA: after `init_from_gradients` A and B hold the gradient's singular vectors (A the
first r right ones, B the next r left ones, both · d_out^¼/√γ), the model's output is
unchanged, the offset travels in the file (a clean base loads the trained model), and
PEFT's own LoRA-GA picks the same subspaces."""
import json

import pytest
import torch

import lorakit

from .test_layer_kinds import output
from .variant_properties import (
    ALL,
    batches,
    check_merge_and_unmerge,
    check_save_and_load,
    loss,
    peft_logits,
    step,
)

peft = pytest.importorskip("peft")

TARGETS = ["*.query", "*.value"]
QUERY = "bert.encoder.layer.0.attention.self.query"


def ga(rank=4, **kw):
    return lorakit.LoRAConfig(rank=rank, alpha=8, method="lora_ga", targets=TARGETS, **kw)


def projector(rows):
    """The orthogonal projector onto the span of the rows."""
    q, _ = torch.linalg.qr(rows.T.double())
    return q @ q.T


def initialised(tiny_bert, rank=4, hidden=32):
    model = tiny_bert(hidden=hidden)
    adapters = lorakit.attach(model, ga(rank))
    lorakit.init_from_gradients(model, adapters, batches(), loss)
    return model, adapters


@pytest.mark.parametrize("case", ALL)
def test_merge_equals_unmerged_forward_and_unmerge_restores_the_base(case):
    check_merge_and_unmerge(case, method="lora_ga", rank=2, alpha=4)


@pytest.mark.parametrize("case", ALL)
def test_save_and_load_round_trip_bit_exactly(case, tmp_path):
    check_save_and_load(case, tmp_path, method="lora_ga", rank=2)


@pytest.mark.parametrize("case", ALL)
def test_the_output_after_init_equals_the_output_before_on_every_kind(case):
    make, targets, inputs = ALL[case]
    model = make()
    x = inputs()
    before = output(model, x).detach()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=1, method="lora_ga",
                                                        targets=targets))
    lorakit.init_from_gradients(model, adapters, [x, inputs()],
                                lambda m, b: output(m, b).pow(2).mean())
    assert all(v.lora_B0.abs().max() > 0 for v in adapters.variants().values())
    assert (output(model, x) - before).abs().max() <= 1e-5


def test_init_takes_a_from_the_first_and_b_from_the_next_singular_vectors(tiny_bert):
    data = batches()
    ids = data[0][0]
    reference = tiny_bert()
    with torch.no_grad():
        before = reference(input_ids=ids).logits
    w = reference.get_submodule(QUERY).weight.requires_grad_(True)
    grad = sum(torch.autograd.grad(loss(reference, b), w)[0] for b in data) / len(data)
    u, _, vh = torch.linalg.svd(grad)
    model, adapters = initialised(tiny_bert)
    v = adapters.variants()[QUERY]
    stable = 32 ** 0.25 / 16 ** 0.5              # d_out^¼ / √γ, γ = 16 (sec. 3.3)
    assert torch.allclose(projector(v.lora_A), projector(vh[:4]), atol=1e-5)
    assert torch.allclose(projector(v.lora_B.T), projector(u[:, 4:8].T), atol=1e-5)
    assert torch.allclose(v.lora_A.norm(dim=1), torch.full((4,), stable))
    assert torch.allclose(v.lora_B.norm(dim=0), torch.full((4,), stable))
    with torch.no_grad():
        assert (model(input_ids=ids).logits - before).abs().max() <= 1e-5


def test_a_step_trains_a_and_b_and_keeps_a0_b0_and_the_base(tiny_bert):
    model, adapters = initialised(tiny_bert)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {k: t.clone() for k, t in adapters.state_dict().items()}
    assert adapters.trainable_count() == 4 * 4 * (32 + 32)        # A and B only
    ids, labels = batches(1, seed=9)[0]
    step(model, adapters, ids, labels)
    after = adapters.state_dict()
    for key in before:
        trained = key.endswith((".lora_A", ".lora_B"))
        assert (not torch.equal(before[key], after[key])) == trained, key
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)


def test_the_file_reproduces_the_trained_model_on_a_clean_base(tiny_bert, tmp_path):
    model, adapters = initialised(tiny_bert)
    ids, labels = batches(1, seed=9)[0]
    for _ in range(3):
        step(model, adapters, ids, labels)
    adapters.save(tmp_path / "ga.safetensors")
    fresh = tiny_bert()
    lorakit.load_adapter(fresh, tmp_path / "ga.safetensors")
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, fresh(input_ids=ids).logits)
        with adapters.disabled():                        # the base was never changed
            assert torch.equal(model(input_ids=ids).logits,
                               tiny_bert()(input_ids=ids).logits)


def test_export_is_a_rank_2r_lora_peft_loads_with_the_same_logits(tiny_bert, tmp_path):
    model, adapters = initialised(tiny_bert)
    ids, labels = batches(1, seed=9)[0]
    step(model, adapters, ids, labels)
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    assert (ours - peft_logits(peft, tiny_bert, adapters, ids, tmp_path)).abs().max() <= 1e-5
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["r"] == 8


def test_peft_lora_ga_spans_the_same_subspaces_and_its_raw_folder_is_refused(tiny_bert,
                                                                            tmp_path):
    # hidden 16, r 4: PEFT's svd_lowrank (q = min(4r, 16)) is then an exact SVD
    data = batches()
    ids = data[0][0]
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                             init_lora_weights="lora_ga", lora_ga_config=peft.LoraGAConfig())
    base = tiny_bert(hidden=16)
    with torch.no_grad():
        before = base(input_ids=ids).logits

    def train_step():
        for b in data:
            loss(base, b).backward()
    peft.preprocess_loraga(base, config, train_step)
    peft_model = peft.get_peft_model(base, config).eval()
    model, adapters = initialised(tiny_bert, hidden=16)
    with torch.no_grad():
        assert (peft_model(input_ids=ids).logits - before).abs().max() <= 1e-5
        assert (model(input_ids=ids).logits - before).abs().max() <= 1e-5
    for path, v in adapters.variants().items():
        layer = peft_model.base_model.model.get_submodule(path)
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert torch.allclose(projector(v.lora_A), projector(a), atol=1e-4), path
        assert torch.allclose(projector(v.lora_B.T), projector(b.T), atol=1e-4), path
    peft_model.save_pretrained(str(tmp_path / "raw"))
    with pytest.raises(lorakit.AdapterFileError, match="lora_ga"):
        lorakit.import_peft(tmp_path / "raw", tiny_bert(hidden=16))
