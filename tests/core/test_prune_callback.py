"""IterativePruning: every criterion reaches the target on LoRAPrune's schedule while LoRA
trains through Lightning, with the optimizer kept valid across the prunes."""
import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

import lorakit
from lorakit.compress.prune import PruneSpec, keep_count
from lorakit.compress.prune_callback import IterativePruning, schedule_ratio
from lorakit.compress.structure import linear

from .tiny_transformers import LLAMA_TARGETS, tiny_llama, tokens


class TinyLM(lorakit.AdapterModule):
    def __init__(self):
        super().__init__(lr=1e-2)
        self.model = tiny_llama()
        self.attach_adapters(self.model, lorakit.LoRAConfig(rank=4, targets=LLAMA_TARGETS))
        self.losses = []

    def training_step(self, batch, batch_idx):
        loss = self.model(input_ids=batch, labels=batch).loss
        self.losses.append(float(loss.detach()))
        return loss


def fit(callback, steps=12, tmp_path=None):
    module = TinyLM()
    data = DataLoader(list(tokens(0, batch=24, length=8)), batch_size=2)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback],
                         default_root_dir=tmp_path)
    trainer.fit(module, data)
    return module, trainer


def test_schedule_is_cubic_from_start_to_end():
    assert schedule_ratio(0, 0, 10, 0.5) == 0.0
    assert schedule_ratio(10, 0, 10, 0.5) == schedule_ratio(20, 0, 10, 0.5) == 0.5
    assert schedule_ratio(5, 0, 10, 0.5) == pytest.approx(0.5 * (1 - 0.5 ** 3))
    assert schedule_ratio(5, 0, 10, 0.5, "linear") == pytest.approx(0.25)


@pytest.mark.parametrize("criterion", ["loraprune", "taylor", "magnitude"])
def test_every_criterion_reaches_the_target_on_the_same_schedule(criterion, tmp_path):
    cb = IterativePruning(PruneSpec(ratio=0.5, gqa="queries"), criterion=criterion, every=3,
                          start=0, end=9)
    module, trainer = fit(cb, tmp_path=tmp_path)
    # 6 query heads (2 groups of 3), 64 channels; ratio r(step) = 0.5 (1 - (1 - step/9)^3)
    steps = [h["step"] for h in cb.history]
    channels = [h["channels_after"] for h in cb.history]
    assert steps == [3, 6, 9]
    assert channels == [keep_count(64, schedule_ratio(s, 0, 9, 0.5)) for s in steps]
    assert channels[-1] == 32 and cb.history[-1]["heads_after"] == 4   # 2 of 3 per group
    cfg = module.model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (4, 2, 32)
    assert cb.report.channels_before == 64 and cb.report.channels_after == 32
    assert len(module.losses) == 12 and all(torch.isfinite(torch.tensor(module.losses)))
    opt = trainer.optimizers[0]
    for p in module.adapters.parameters():
        for v in opt.state[p].values():
            assert not torch.is_tensor(v) or v.ndim == 0 or v.shape == p.shape
    if criterion != "taylor":
        assert linear(module.model, "model.layers.0.mlp.up_proj").weight.grad is None
    assert not any(p.requires_grad for n, p in module.model.named_parameters()
                   if "lora_" not in n)


def test_the_composed_report_maps_the_final_weights_to_the_initial_ones(tmp_path):
    cb = IterativePruning(PruneSpec(ratio=0.5, heads=False), criterion="magnitude", every=2,
                          start=2, end=8)
    start = tiny_llama()     # TinyLM's base, same seed, before training
    module, _ = fit(cb, steps=8, tmp_path=tmp_path)
    assert [h["step"] for h in cb.history] == [4, 6, 8]
    path = "model.layers.1.mlp.down_proj"
    cols = torch.tensor(cb.report.kept[path]["cols"])
    assert torch.equal(linear(module.model, path).weight, start.model.layers[1].mlp.down_proj
                       .weight[:, cols])


def test_iterative_pruning_refuses_bad_arguments():
    with pytest.raises(lorakit.LoraKitError, match="criterion must be one of"):
        IterativePruning(PruneSpec(), criterion="random")
    with pytest.raises(lorakit.LoraKitError, match="every >= 1"):
        IterativePruning(PruneSpec(), every=0)
