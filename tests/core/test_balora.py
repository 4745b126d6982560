"""BA-LoRA: consistency, diversity and SVD terms on the outputs, each checked against numbers
worked out by hand; the base outputs come from the same model with its adapters off."""
import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lorakit
from lorakit.config import BALoRAOptions
from lorakit.training.module import AdapterModule


def handle(task="nlu", **weights):
    cfg = dict(consistency=1.0, diversity=1.0, svd=1.0, svd_k=1)
    cfg.update(weights)
    return lorakit.attach(nn.Sequential(nn.Linear(2, 2)), lorakit.LoRAConfig(
        method="balora", balora=BALoRAOptions(task=task, **cfg), targets=["0"]))


def test_nlu_consistency_is_the_mse_of_row_normalised_outputs():
    # [3, 4]/5 = [0.6, 0.8] against [4, 3]/5 = [0.8, 0.6]: squared errors 0.04 and 0.04
    terms = handle().regularisers(torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]]))
    assert terms["default/consistency"].item() == pytest.approx(0.04)


def test_nlu_diversity_is_the_squared_off_diagonal_covariance_over_width():
    # rows [0, 0] and [2, 2]: centred ±[1, 1], covariance [[2, 2], [2, 2]] (N - 1 = 1):
    # off-diagonal 2² + 2² = 8, over C = 2 columns: 4
    same = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    assert handle().regularisers(same, same)["default/diversity"].item() == pytest.approx(4.0)
    # rows [1, 0] and [0, 1]: covariance [[.5, -.5], [-.5, .5]]: (0.25 + 0.25) / 2
    eye = torch.eye(2)
    assert handle().regularisers(eye, eye)["default/diversity"].item() == pytest.approx(0.25)


def test_svd_term_is_minus_the_top_k_share_of_the_singular_values():
    o = torch.tensor([[3.0, 0.0], [0.0, 1.0]])                  # σ = 3, 1
    assert handle().regularisers(o, o)["default/svd"].item() == pytest.approx(-0.75)
    assert handle(svd_k=2).regularisers(o, o)["default/svd"].item() == pytest.approx(-1.0)


def test_nlg_terms_are_kl_to_the_base_and_negative_entropy():
    # adapted p = softmax([ln 3, 0]) = [.75, .25]; base p0 = softmax([0, 0]) = [.5, .5]
    o, base = torch.tensor([[math.log(3.0), 0.0]]), torch.zeros(1, 2)
    terms = handle("nlg").regularisers(o, base)
    # KL(p0 ‖ p) = .5 ln(.5/.75) + .5 ln(.5/.25) = .5 ln(4/3)
    assert terms["default/consistency"].item() == pytest.approx(0.5 * math.log(4 / 3))
    # Σ p ln p = .75 ln .75 + .25 ln .25
    assert terms["default/diversity"].item() == pytest.approx(
        0.75 * math.log(0.75) + 0.25 * math.log(0.25))


def test_weights_multiply_the_terms_and_token_outputs_are_rows_picked_by_the_mask():
    o = torch.tensor([[[math.log(3.0), 0.0], [5.0, -5.0]]])    # (batch 1, 2 tokens, vocab 2)
    base = torch.zeros(1, 2, 2)
    mask = torch.tensor([[True, False]])                         # the second token is padding
    adapters = handle("nlg", consistency=1e-4, diversity=3e-4, svd=1e-4)
    terms = adapters.regularisers(o, base, mask=mask)
    assert terms["default/consistency"].item() == pytest.approx(1e-4 * 0.5 * math.log(4 / 3))
    assert adapters.regulariser_loss(o, base, mask=mask).item() == pytest.approx(
        sum(t.item() for t in terms.values()))


def test_nlg_consistency_sums_a_sequences_tokens_and_averages_over_sequences():
    # every token: adapted [.75, .25] against base [.5, .5], KL = .5 ln(4/3) (above);
    # the authors' reduction="batchmean" divides the sum over tokens by the batch size
    kl = 0.5 * math.log(4 / 3)
    token = torch.tensor([math.log(3.0), 0.0])
    one_seq_two_tokens = token.expand(1, 2, 2)                  # (batch 1, 2 tokens, vocab 2)
    terms = handle("nlg").regularisers(one_seq_two_tokens, torch.zeros(1, 2, 2))
    assert terms["default/consistency"].item() == pytest.approx(2 * kl)
    two_seqs_one_token = token.expand(2, 1, 2)
    terms = handle("nlg").regularisers(two_seqs_one_token, torch.zeros(2, 1, 2))
    assert terms["default/consistency"].item() == pytest.approx(kl)
    # with a mask: the real tokens' KL summed, over the 2 sequences (padding counts nothing)
    mask = torch.tensor([[True, True], [True, False]])
    terms = handle("nlg").regularisers(token.expand(2, 2, 2), torch.zeros(2, 2, 2), mask=mask)
    assert terms["default/consistency"].item() == pytest.approx(3 * kl / 2)
    # the entropy term stays a mean over token rows
    assert terms["default/diversity"].item() == pytest.approx(
        0.75 * math.log(0.75) + 0.25 * math.log(0.25))


def test_plain_lora_has_no_terms_and_balora_needs_the_base_outputs():
    plain = lorakit.attach(nn.Sequential(nn.Linear(2, 2)), lorakit.LoRAConfig(targets=["0"]))
    assert not plain.output_regularised and plain.regularisers(torch.ones(2, 2)) == {}
    assert plain.regulariser_loss(torch.ones(2, 2)).item() == 0.0
    with pytest.raises(lorakit.LoraKitError, match="adapters.disabled"):
        handle().regularisers(torch.ones(2, 2))


class TinyClassifier(AdapterModule):
    def __init__(self):
        super().__init__(lr=0.05)
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.attach_adapters(self.model, lorakit.LoRAConfig(
            rank=2, method="balora", balora=BALoRAOptions(consistency=1.0, diversity=1.0, svd=1.0),
            targets=["0", "2"]))
        with torch.no_grad():
            for v in self.adapters.variants().values():
                v.lora_B.normal_(std=0.5)
        self.seen_enabled: list[list[bool]] = []

    def base_logits(self, x):
        self.seen_enabled.append([layer.enabled for layer in self.adapters.layers.values()])
        return self.model(x)

    def training_step(self, batch, _):
        x, y = batch
        logits = self.model(x)
        self.last_reg = self.output_regularisers(logits, lambda: self.base_logits(x))
        return F.cross_entropy(logits, y)        # AdapterModule adds the terms


def test_base_outputs_come_from_the_same_model_with_adapters_disabled():
    module = TinyClassifier()
    x = torch.randn(6, 4)
    logits = module.model(x)
    reg = module.output_regularisers(logits, lambda: module.base_logits(x))
    assert module.seen_enabled == [[False, False]]                     # adapters off, no copy
    assert all(layer.enabled for layer in module.adapters.layers.values())   # and on again
    with torch.no_grad(), module.adapters.disabled():
        base = module.model(x)
    want = module.adapters.regulariser_loss(logits, base)
    assert reg.item() == pytest.approx(want.item()) and reg.requires_grad
    consistency = F.mse_loss(F.normalize(logits, dim=-1), F.normalize(base, dim=-1))
    assert module.adapters.regularisers(logits, base)["default/consistency"].item() \
        == pytest.approx(consistency.item())


def test_a_training_step_moves_only_the_factors_and_the_terms_reach_them(tmp_path):
    module = TinyClassifier()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    x = torch.randn(6, 4)
    reg = module.output_regularisers(module.model(x), lambda: module.model(x))
    grads = torch.autograd.grad(reg, list(module.adapters.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)             # each term trains the factors
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(12, 4, generator=g),
                                    torch.randint(0, 3, (12,), generator=g)), batch_size=6)
    pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=tmp_path).fit(module, data)
    for name, p in module.named_parameters():
        assert (not torch.equal(p, before[name])) == ("lora_" in name), name
