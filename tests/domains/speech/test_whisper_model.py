"""Loading openai-whisper checkpoints: a file that is not one gets one clear error."""
from __future__ import annotations

import pytest
import torch

from lorakit.domains.speech.whisper_model import context_samples, load_whisper
from lorakit.errors import CheckpointError


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"whisper checkpoint .*nope\.pt does not exist"):
        load_whisper(tmp_path / "nope.pt")


def test_garbage_file_is_not_a_whisper_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match=r"x\.pt is not a readable openai-whisper checkpoint"):
        load_whisper(tmp_path / "x.pt")


def test_a_state_dict_alone_is_not_a_whisper_checkpoint(tmp_path):
    torch.save({"encoder.conv1.weight": torch.zeros(2)}, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match=r"sd\.pt is not an openai-whisper checkpoint: "
                                              r"found \['encoder\.conv1\.weight'\], expected a "
                                              r"dict with 'dims' and 'model_state_dict'"):
        load_whisper(tmp_path / "sd.pt")


def test_weights_that_do_not_fit_the_dims(tmp_path, tiny_en):
    checkpoint = torch.load(tiny_en, weights_only=True)
    checkpoint["dims"]["n_text_layer"] = 2
    torch.save(checkpoint, tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match=r"cut\.pt: its weights do not fit Whisper"):
        load_whisper(tmp_path / "cut.pt")


def test_context_longer_than_the_checkpoint_is_refused(tiny_en):
    with pytest.raises(CheckpointError, match=r"n_audio_ctx=2000 is outside 1\.\.1500"):
        load_whisper(tiny_en, n_audio_ctx=2000)


def test_context_samples():
    assert context_samples(150) == 48000 and context_samples(1500) == 480000
