import pytest
import torch


@pytest.fixture(scope="session")
def tiny_en():
    """The converted Whisper tiny.en checkpoint (built into the cache on first use)."""
    from lorakit.domains.speech.pretrained import tiny_en_checkpoint

    torch.set_num_threads(1)
    return tiny_en_checkpoint()
