"""AdapterEMA: the handed-over weights are the bias-corrected average of the steps' weights."""
import lightning.pytorch as pl
import pytest
import torch

import lorakit
from lorakit.training.averaging import AdapterEMA

from .test_lightning import TinyClassifier, loader, trainer


class Record(pl.Callback):
    """The trainable weights after every optimizer step, and what validation sees."""

    def __init__(self):
        self.steps, self.in_val, self.after_val = [], [], []

    def _now(self, module):
        return [p.detach().clone() for p in module.parameters() if p.requires_grad]

    def on_train_batch_end(self, trainer, module, *_):
        self.steps.append(self._now(module))

    def on_validation_epoch_end(self, trainer, module):
        if trainer.global_step:
            self.in_val.append(self._now(module))

    def on_validation_end(self, trainer, module):
        if trainer.global_step:
            self.after_val.append(self._now(module))


class WithVal(TinyClassifier):
    def validation_step(self, batch, _):
        ids, labels = batch
        self.log("val_loss", self.model(input_ids=ids, labels=labels).loss)


def ema_by_hand(steps, decay):
    avg = [torch.zeros_like(w) for w in steps[0]]
    for ws in steps:
        avg = [decay * a + (1 - decay) * w for a, w in zip(avg, ws)]
    return [a / (1 - decay ** len(steps)) for a in avg]


def trainable(module):
    return [p.detach() for p in module.parameters() if p.requires_grad]


def test_fit_hands_over_the_bias_corrected_average_of_every_step(tmp_path):
    pl.seed_everything(0)
    module, rec = TinyClassifier(), Record()
    trainer(tmp_path, 3, callbacks=[rec, AdapterEMA(0.9)]).fit(module, loader())
    assert len(rec.steps) == 12
    expected = ema_by_hand(rec.steps, 0.9)
    assert all(torch.allclose(p, e, atol=1e-6) for p, e in zip(trainable(module), expected))
    # and it is not simply the last step's weights
    assert not all(torch.allclose(p, w, atol=1e-4) for p, w in zip(trainable(module),
                                                                      rec.steps[-1]))


def test_decay_zero_hands_over_the_last_step(tmp_path):
    pl.seed_everything(0)
    module, rec = TinyClassifier(), Record()
    trainer(tmp_path, 1, callbacks=[rec, AdapterEMA(0.0)]).fit(module, loader())
    assert all(torch.equal(p, w) for p, w in zip(trainable(module), rec.steps[-1]))


def test_validation_sees_the_average_and_training_goes_on_from_the_raw_weights(tmp_path):
    pl.seed_everything(0)
    module, rec = WithVal(), Record()
    trainer(tmp_path, 2, callbacks=[rec, AdapterEMA(0.8)]).fit(
        module, loader(), val_dataloaders=loader(16, seed=1))
    first_epoch = rec.steps[:4]
    assert all(torch.allclose(v, e, atol=1e-6)
               for v, e in zip(rec.in_val[0], ema_by_hand(first_epoch, 0.8)))
    assert all(torch.equal(v, w) for v, w in zip(rec.after_val[0], first_epoch[-1]))


def test_the_adapter_file_saved_after_fit_holds_the_average(tmp_path):
    pl.seed_everything(0)
    module, rec = TinyClassifier(), Record()
    trainer(tmp_path, 2, callbacks=[rec, AdapterEMA(0.9)]).fit(module, loader())
    module.adapters.save(tmp_path / "a.safetensors")
    fresh = TinyClassifier()
    fresh.adapters.load_state_dict(lorakit.read_adapter(tmp_path / "a.safetensors")[1])
    assert all(torch.allclose(p, e, atol=1e-6)
               for p, e in zip(trainable(fresh), ema_by_hand(rec.steps, 0.9)))


def test_a_resumed_run_hands_over_the_same_average(tmp_path):
    pl.seed_everything(7)
    straight = TinyClassifier()
    trainer(tmp_path / "a", 4, callbacks=[AdapterEMA(0.9)]).fit(straight, loader())

    pl.seed_everything(7)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path / "b", 2, callbacks=[ckpt, AdapterEMA(0.9)]).fit(TinyClassifier(), loader())
    pl.seed_everything(123)
    resumed = TinyClassifier()
    trainer(tmp_path / "c", 4, callbacks=[AdapterEMA(0.9)]).fit(
        resumed, loader(), ckpt_path=str(tmp_path / "ckpt/last.ckpt"))
    assert all(torch.allclose(a, b, atol=1e-6)
               for a, b in zip(trainable(straight), trainable(resumed)))


def test_a_resume_with_another_decay_is_refused(tmp_path):
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, 1, callbacks=[ckpt, AdapterEMA(0.9)]).fit(TinyClassifier(), loader())
    with pytest.raises(lorakit.LoraKitError, match="decay 0.9"):
        trainer(tmp_path, 2, callbacks=[AdapterEMA(0.99)]).fit(
            TinyClassifier(), loader(), ckpt_path=str(tmp_path / "ckpt/last.ckpt"))


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_a_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(lorakit.LoraKitError, match="decay"):
        AdapterEMA(decay)


class Frozen(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 2).requires_grad_(False)

    def training_step(self, batch, _):
        return None

    def configure_optimizers(self):
        return None


def test_a_module_with_nothing_to_average_is_refused(tmp_path):
    with pytest.raises(lorakit.LoraKitError, match="no trainable parameters to average"):
        trainer(tmp_path, 1, callbacks=[AdapterEMA()]).fit(Frozen(), loader())
