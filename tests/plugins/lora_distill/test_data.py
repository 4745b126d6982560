"""ConditioningDataModule: conditioning + noise (+ real x_0) per batch, clear errors."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lorakit.errors import DataError
from lorakit.plugins.lora_distill.data import ConditioningDataModule


def first(loader):
    return next(iter(loader))


def test_digits_batches_hold_labels_images_and_noise():
    dm = ConditioningDataModule(source="digits", batch_size=8)
    dm.setup("fit")
    b = first(dm.train_dataloader())
    assert b["class_labels"].shape == (8,) and b["class_labels"].dtype == torch.int64
    assert b["images"].shape == b["noise"].shape == (8, 1, 16, 16)
    assert len(dm.val_dataloader().dataset) == 355  # the held-out 20%


def test_validation_and_predict_noise_is_the_same_every_run():
    a = ConditioningDataModule(source="digits", batch_size=4)
    b = ConditioningDataModule(source="digits", batch_size=4)
    assert torch.equal(first(a.val_dataloader())["noise"], first(b.val_dataloader())["noise"])
    p = first(ConditioningDataModule(source="digits", batch_size=100).predict_dataloader())
    assert p["class_labels"].tolist() == [c for c in range(10) for _ in range(10)]


def test_labels_source_is_data_free():
    dm = ConditioningDataModule(source="labels", num_classes=4, batch_size=16,
                                sample_shape=[3, 8, 8], epoch_size=32)
    b = first(dm.train_dataloader())
    assert "images" not in b and b["noise"].shape == (16, 3, 8, 8)
    assert int(b["class_labels"].max()) < 4
    assert len(dm.train_dataloader().dataset) == 32


def test_prompt_embeddings_from_a_safetensors_file(tmp_path):
    path = tmp_path / "prompts.safetensors"
    save_file({"encoder_hidden_states": torch.randn(3, 5, 12),
               "uncond_encoder_hidden_states": torch.ones(1, 5, 12)}, str(path))
    dm = ConditioningDataModule(source="embeddings", embeddings=str(path), batch_size=4,
                                epoch_size=8, predict_per_class=2)
    b = first(dm.train_dataloader())
    assert b["encoder_hidden_states"].shape == (4, 5, 12)
    assert torch.equal(b["uncond_encoder_hidden_states"], torch.ones(1, 5, 12))
    assert len(dm.predict_dataloader().dataset) == 6


def test_bad_sources_and_files_are_named(tmp_path):
    with pytest.raises(DataError, match="source must be one of"):
        ConditioningDataModule(source="imagenet")
    with pytest.raises(DataError, match="needs --data.embeddings"):
        ConditioningDataModule(source="embeddings")
    with pytest.raises(DataError, match="does not exist"):
        ConditioningDataModule(source="embeddings", embeddings=str(tmp_path / "x")).setup("fit")
    bad = tmp_path / "bad.safetensors"
    save_file({"prompt": torch.zeros(2, 3)}, str(bad))
    with pytest.raises(DataError, match="no 'encoder_hidden_states'"):
        ConditioningDataModule(source="embeddings", embeddings=str(bad)).setup("fit")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="not a readable safetensors"):
        ConditioningDataModule(source="embeddings", embeddings=str(junk)).setup("fit")
