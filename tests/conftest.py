"""Shared test settings: one torch thread (often several times faster here than two)."""
import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("LORAKIT_THREADS", "1")


@pytest.fixture
def tiny_bert():
    """A randomly initialised transformers BERT small enough for any test."""
    from transformers import BertConfig, BertForSequenceClassification

    def make(seed: int = 0, hidden: int = 32, layers: int = 2, labels: int = 2):
        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=60, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=2, intermediate_size=2 * hidden,
                         max_position_embeddings=32, num_labels=labels,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return BertForSequenceClassification(cfg).eval()
    return make


def randomise_params(params, seed: int = 0, std: float = 0.2) -> None:
    """Give adapter tensors values (B starts at zero) so a test measures something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="session")
def randomise():
    return randomise_params
