"""The Lightning glue: adapter-only optimizer, small checkpoints, exact resume."""
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lorakit
from lorakit.training.module import AdapterModule


class TinyClassifier(AdapterModule):
    """A BERT sequence classifier with LoRA on query/value, as a plugin would write it."""

    def __init__(self, hidden: int = 64, rank: int = 4, lr: float = 1e-2, dropout: float = 0.1,
                 output_dir: str | None = None):
        super().__init__(lr=lr, output_dir=output_dir)
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=60, hidden_size=hidden, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=4 * hidden,
                         max_position_embeddings=32, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
        self.model = BertForSequenceClassification(cfg)
        self.attach_adapters(self.model, lorakit.LoRAConfig(
            rank=rank, dropout=dropout, targets=["*.query", "*.value"],
            modules_to_save=["classifier"]))

    def training_step(self, batch, _):
        ids, labels = batch
        loss = self.model(input_ids=ids, labels=labels).loss
        self.log("train_loss", loss)
        return loss


def loader(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 60, (n, 12), generator=g)
    labels = (ids[:, 0] > 30).long()
    return DataLoader(TensorDataset(ids, labels), batch_size=8, shuffle=False)


def trainer(tmp_path, epochs, logger=False, **kw):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=logger,
                      enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, **kw)


def test_optimizer_holds_adapter_parameters_only_grouped_by_kind():
    module = TinyClassifier()
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"lora", "full"}
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in module.adapters.parameters()}
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) \
        == module.adapters.trainable_count() < module.adapters.total_count() / 10


def test_checkpoint_holds_adapters_only_and_is_far_smaller_than_the_base(tmp_path):
    module = TinyClassifier(hidden=128)
    t = trainer(tmp_path, 1)
    t.fit(module, loader())
    t.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert set(ckpt["state_dict"]) == set(module.trainable_state())
    base_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    assert (tmp_path / "last.ckpt").stat().st_size < base_bytes / 5


def test_resumed_run_ends_with_the_same_adapter_as_an_uninterrupted_run(tmp_path):
    pl.seed_everything(7)
    straight = TinyClassifier()
    trainer(tmp_path / "a", 4).fit(straight, loader())

    pl.seed_everything(7)
    first = TinyClassifier()
    cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path / "b", 2, callbacks=[cb]).fit(first, loader())   # "killed" after 2 epochs

    pl.seed_everything(123)  # a different seed: state must come from the checkpoint
    resumed = TinyClassifier()
    trainer(tmp_path / "c", 4).fit(resumed, loader(), ckpt_path=str(tmp_path / "ckpt/last.ckpt"))
    a, b = straight.adapters.state_dict(), resumed.adapters.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resume diverged"
    untrained = TinyClassifier().adapters.state_dict()
    assert not torch.equal(a["classifier.weight"], untrained["classifier.weight"])


def test_resume_from_a_checkpoint_of_another_config_is_refused(tmp_path):
    cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, 1, callbacks=[cb]).fit(TinyClassifier(), loader())
    other = TinyClassifier()
    other.adapters.detach()
    other.attach_adapters(other.model, lorakit.LoRAConfig(rank=4, targets=["*.key"]))
    with pytest.raises(lorakit.LoraKitError, match="does not hold the adapters"):
        trainer(tmp_path, 2).fit(other, loader(), ckpt_path=str(tmp_path / "ckpt/last.ckpt"))


# --- the adapter file at the end of fit ---------------------------------------------------
class Reporting(TinyClassifier):
    """Adds metadata through the hook and records every call of on_adapter_saved."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.saved = []

    def adapter_metadata(self):
        return {"plugin": "tiny", "steps": int(self.global_step)}

    def on_adapter_saved(self, path):
        self.saved.append(path)


def saved_once_with_metadata(module, root, expected):
    assert module.saved == [expected]
    assert sorted(root.rglob("*.safetensors")) == [expected]
    meta, tensors = lorakit.read_adapter(expected)
    assert meta["extra"] == {"plugin": "tiny", "steps": 8}  # 2 epochs of 4 batches
    state = module.adapters.state_dict()
    assert set(tensors) == set(state) and all(torch.equal(tensors[k], state[k]) for k in state)


def test_fit_saves_the_adapter_once_into_the_loggers_run_folder(tmp_path):
    module = Reporting()
    t = trainer(tmp_path, 2, logger=True)
    t.fit(module, loader())
    expected = tmp_path / "lightning_logs" / "version_0" / "adapter.safetensors"
    assert Path(t.log_dir) == expected.parent
    saved_once_with_metadata(module, tmp_path, expected)


def test_fit_without_a_logger_saves_into_default_root_dir(tmp_path):
    module = Reporting()
    trainer(tmp_path, 2).fit(module, loader())
    saved_once_with_metadata(module, tmp_path, tmp_path / "adapter.safetensors")


def test_output_dir_wins_over_the_run_folder(tmp_path):
    module = Reporting(output_dir=str(tmp_path / "mine"))
    trainer(tmp_path / "root", 2, logger=True).fit(module, loader())
    saved_once_with_metadata(module, tmp_path, tmp_path / "mine" / "adapter.safetensors")


def test_a_merged_adapter_is_saved_unmerged_and_stays_merged(tmp_path):
    module = Reporting()
    with torch.no_grad():
        for p in module.adapters.parameters():
            p.add_(0.1)
    module.adapters.merge()
    path = module.save_adapter(tmp_path)
    assert module.adapters.merged
    module.adapters.unmerge()
    _, tensors = lorakit.read_adapter(path)
    state = module.adapters.state_dict()
    assert all(torch.equal(tensors[k], state[k]) for k in state)


def test_saving_without_a_trainer_or_output_dir_says_what_to_pass():
    with pytest.raises(lorakit.LoraKitError, match="pass output_dir"):
        Reporting().save_adapter()


def test_attach_adapters_adopts_a_handle_already_on_the_model_and_refuses_another_models():
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    handle = lorakit.attach(net, lorakit.LoRAConfig(rank=2, targets=["0"]))
    module = AdapterModule()
    assert module.attach_adapters(net, handle) is handle
    assert module.adapters is handle
    assert {id(p) for p in module.param_groups()[0]["params"]} <= {
        id(p) for p in handle.parameters()}
    other = torch.nn.Sequential(torch.nn.Linear(4, 8))
    with pytest.raises(lorakit.LoraKitError, match="the adapters given sit on another model"):
        AdapterModule().attach_adapters(other, handle)
