"""attach(): targets, freezing, the on/off switch, detach, S2-LoRA sharing and pruning."""
import pytest
import torch
from torch import nn

import lorakit
from lorakit.training.proximal import adam_thresholds


def test_glob_patterns_select_query_and_value_of_a_bert(tiny_bert):
    model = tiny_bert()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(targets=["*.query", "value"]))
    assert sorted(adapters.layers) == sorted(
        f"bert.encoder.layer.{i}.attention.self.{n}" for i in range(2) for n in ("query", "value"))


def test_only_adapter_parameters_are_trainable(tiny_bert):
    model = tiny_bert()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=4, targets=["*.query"]))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in adapters.parameters()}
    assert adapters.trainable_count() == 2 * 4 * (32 + 32)


def test_pattern_matching_nothing_lists_existing_linear_paths(tiny_bert):
    with pytest.raises(lorakit.TargetNotFoundError) as err:
        lorakit.attach(tiny_bert(), lorakit.LoRAConfig(targets=["*.q_proj"]))
    msg = str(err.value)
    assert "'*.q_proj' matched no module" in msg
    assert "bert.encoder.layer.0.attention.self.query" in msg


def test_pattern_matching_only_non_linear_modules_says_so(tiny_bert):
    with pytest.raises(lorakit.TargetNotFoundError,
                       match="matched no module lorakit can adapt.*LayerNorm"):
        lorakit.attach(tiny_bert(), lorakit.LoRAConfig(targets=["*.attention.output.LayerNorm"]))


def test_disabled_adapters_give_the_frozen_base_model(tiny_bert):
    ids = torch.randint(0, 60, (2, 10))
    model = tiny_bert()
    base_logits = model(input_ids=ids).logits
    adapters = lorakit.attach(model, lorakit.LoRAConfig(targets=["*.query", "*.value"]))
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_()
    adapted = model(input_ids=ids).logits
    assert not torch.allclose(adapted, base_logits)
    with adapters.disabled():
        assert torch.equal(model(input_ids=ids).logits, base_logits)
    adapters.merge()
    with adapters.disabled():  # unmerges inside, merges back after
        assert torch.allclose(model(input_ids=ids).logits, base_logits, atol=1e-5)
    assert adapters.merged
    assert torch.allclose(model(input_ids=ids).logits, adapted, atol=1e-5)


def test_detach_puts_the_original_modules_and_grad_flags_back(tiny_bert):
    model = tiny_bert()
    query = model.bert.encoder.layer[0].attention.self.query
    adapters = lorakit.attach(model, lorakit.LoRAConfig(targets=["*.query"]))
    assert model.bert.encoder.layer[0].attention.self.query is not query
    adapters.detach()
    assert model.bert.encoder.layer[0].attention.self.query is query
    assert all(p.requires_grad for p in model.parameters())
    assert lorakit.adapters_of(model) is None
    assert not any(isinstance(m, lorakit.LoRALayer) for m in model.modules())


def test_detach_with_merge_keeps_the_update_in_plain_linear_modules(tiny_bert):
    ids = torch.randint(0, 60, (2, 10))
    model = tiny_bert()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(targets=["*.query"]))
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_()
    adapted = model(input_ids=ids).logits
    adapters.detach(merge=True)
    assert type(model.bert.encoder.layer[0].attention.self.query) is nn.Linear
    assert torch.allclose(model(input_ids=ids).logits, adapted, atol=1e-5)


def test_attaching_the_same_name_twice_is_refused(tiny_bert):
    model = tiny_bert()
    lorakit.attach(model, lorakit.LoRAConfig(targets=["*.query"]))
    with pytest.raises(lorakit.LoraKitError, match="already has an adapter named 'default'"):
        lorakit.attach(model, lorakit.LoRAConfig(targets=["*.value"]))


def test_attaching_to_a_submodule_of_an_adapted_model_is_refused(tiny_bert):
    model = tiny_bert()
    lorakit.attach(model, lorakit.LoRAConfig(targets=["*.query"]))
    with pytest.raises(lorakit.LoraKitError, match="attached to another module"):
        lorakit.attach(model.bert, lorakit.LoRAConfig(targets=["*.value"]))


def test_modules_to_save_are_trained_in_full_and_saved(tiny_bert, tmp_path):
    model = tiny_bert()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=2, targets=["*.query"],
                                                        modules_to_save=["classifier"]))
    assert model.classifier.weight.requires_grad
    assert "classifier.weight" in adapters.state_dict()
    assert adapters.trainable_count() == 2 * 2 * 64 + 32 * 2 + 2


def test_s2lora_shares_a_and_b_per_shape_and_counts_parameters_by_formula(tiny_bert):
    model = tiny_bert()
    targets = ["*.query", "*.value", "*.intermediate.dense", "*.output.dense"]
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=4, method="s2lora", targets=targets))
    layers = list(adapters.layers.values())
    assert all(isinstance(v, lorakit.S2LoRA) for v in adapters.variants().values())
    shapes = {(layer_.in_features, layer_.out_features) for layer_ in layers}
    # 32x32 (query, value, attention.output.dense), 32->64 (intermediate), 64->32 (output)
    assert shapes == {(32, 32), (32, 64), (64, 32)}
    formula = sum(4 * i + o * 4 for i, o in shapes) + 4 * len(layers)
    assert adapters.trainable_count() == formula
    q0 = model.bert.encoder.layer[0].attention.self.query
    v1 = model.bert.encoder.layer[1].attention.self.value
    assert q0.variants["default"].basis is v1.variants["default"].basis


def test_s2lora_l1_penalty_and_pruning_keep_outputs(tiny_bert):
    ids = torch.randint(0, 60, (2, 10))
    model = tiny_bert()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=6, method="s2lora",
                                                        targets=["*.query", "*.value"]))
    with torch.no_grad():
        for i, v in enumerate(adapters.variants().values()):
            v.basis.lora_B.normal_()
            v.lora_lambda.copy_(torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0, 0.0]) * (i + 1))
        v.lora_lambda[3] = 2.0  # rank 3 used by one matrix only: kept
    assert adapters.l1_penalty().item() == pytest.approx(sum(
        v.lora_lambda.abs().sum().item() for v in adapters.variants().values()))
    report = adapters.sparsity_report()
    assert report[0] == {"module": "bert.encoder.layer.0.attention.self.query", "rank": 6,
                         "active": 2, "sparsity": pytest.approx(4 / 6), "exact_zeros": 4}
    before = model(input_ids=ids).logits
    assert adapters.prune() == {"shared.32x32": 3}
    assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-6)


def test_s2lora_shrink_soft_thresholds_lambda_to_exact_zeros(tiny_bert):
    adapters = lorakit.attach(tiny_bert(), lorakit.LoRAConfig(rank=4, method="s2lora",
                                                              targets=["*.query"]))
    v = next(iter(adapters.variants().values()))
    with torch.no_grad():
        v.lora_lambda.copy_(torch.tensor([0.5, -0.05, 0.1, -2.0]))
    adapters.shrink(0.1)
    assert v.lora_lambda.tolist() == pytest.approx([0.4, 0.0, 0.0, -1.9])
    assert (v.lora_lambda == 0).sum() == 2 and v.lora_lambda.requires_grad


def test_proximal_adam_switches_off_the_ranks_a_task_does_not_need():
    """Proximal L1 in Adam's metric: a rank-2 target learned with 8 ranks keeps exactly 2
    λ nonzero and fits; the same L1 added to the loss leaves every λ nonzero."""
    def fit(proximal: bool) -> tuple[torch.Tensor, float]:
        torch.manual_seed(0)
        layer = nn.Sequential(nn.Linear(16, 16, bias=False))
        adapters = lorakit.attach(layer, lorakit.LoRAConfig(rank=8, alpha=8, method="s2lora",
                                                            targets=["0"]))
        v = next(iter(adapters.variants().values()))
        target = torch.randn(16, 2) @ torch.randn(2, 16) / 4      # a rank-2 update to learn
        opt = torch.optim.Adam([{"params": [v.basis.lora_A, v.basis.lora_B], "lr": 1e-2},
                                {"params": [v.lora_lambda], "lr": 2e-2}])
        for _ in range(400):
            x = torch.randn(64, 16)
            loss = ((layer(x) - layer[0].base(x) - x @ target.T) ** 2).mean()
            if not proximal:
                loss = loss + 0.1 * adapters.l1_penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if proximal:
                adapters.shrink(adam_thresholds(opt, 0.1))
        return v.lora_lambda.detach(), loss.item()

    lam, loss = fit(proximal=True)
    assert (lam != 0).sum() == 2 and loss < 0.01
    lam, _ = fit(proximal=False)
    assert (lam != 0).all()


def test_adam_thresholds_leave_entries_without_a_gradient_alone():
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.1)
    assert adam_thresholds(opt, 1.0)(p) == 0.0                 # no step yet
    p.grad = torch.tensor([0.5, 0.0, -2.0])
    opt.step()
    tau = adam_thresholds(opt, 1.0)(p)
    # after one step v̂ = g²: τ = lr·l1/(|g| + ε); zero where no gradient was seen
    assert tau.tolist() == pytest.approx([0.1 / 0.5, 0.0, 0.1 / 2.0], rel=1e-4)


def test_whisper_linear_subclass_with_dtype_cast_is_adapted():
    whisper = pytest.importorskip("whisper")
    dims = whisper.model.ModelDimensions(n_mels=80, n_audio_ctx=10, n_audio_state=16,
                                         n_audio_head=2, n_audio_layer=1, n_vocab=60,
                                         n_text_ctx=8, n_text_state=16, n_text_head=2,
                                         n_text_layer=1)
    torch.manual_seed(0)
    model = whisper.model.Whisper(dims).eval()
    # whisper leaves the decoder's positional embedding uninitialised (torch.empty):
    # a checkpoint fills it; here we do
    nn.init.normal_(model.decoder.positional_embedding, std=0.02)
    for m in model.modules():  # fp16 Linear weights; whisper casts them to the input dtype
        if isinstance(m, nn.Linear):
            m.half()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=2, targets=["*.query", "*.value"]))
    assert len(adapters.layers) == 2 + 4  # encoder self-attn; decoder self- and cross-attn
    mel = torch.randn(1, 80, 20)
    tokens = torch.randint(0, 60, (1, 4))
    logits = model(mel, tokens)  # whisper's Linear casts its fp16 weight to float32 input
    assert logits.dtype == torch.float32
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_(std=0.1)
        unmerged = model(mel, tokens)
        adapters.merge()
        merged = model(mel, tokens)
    assert (merged - unmerged).abs().max() < 5e-2  # fp16 base weights


def test_diffusers_unet_attention_projections_are_adapted():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4).eval()
    x, t, c = torch.randn(1, 1, 8, 8), torch.tensor([10]), torch.randn(1, 3, 8)
    base = unet(x, t, c).sample
    adapters = lorakit.attach(unet, lorakit.LoRAConfig(rank=2, targets=["*.to_q", "*.to_v"]))
    assert len(adapters.layers) == 16  # 4 transformer blocks (down, mid, 2 up) x attn1/attn2 x q/v
    assert torch.equal(unet(x, t, c).sample, base)
