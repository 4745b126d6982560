"""CTranslate2 Whisper (faster-whisper's format) to an openai-whisper `Whisper` model.

CTranslate2 stores the transformer under its own layer names and fuses projections:

    CTranslate2 (`WhisperSpec`)                        openai-whisper
    encoder/conv{1,2}/{weight,bias}                    encoder.conv{1,2}.*
    encoder/position_encodings/encodings               encoder.positional_embedding
    {enc,dec}/layer_i/self_attention/linear_0 (3d×d)   blocks.i.attn.{query,key,value}
    {enc,dec}/layer_i/self_attention/linear_1          blocks.i.attn.out
    decoder/layer_i/attention/linear_0                 blocks.i.cross_attn.query
    decoder/layer_i/attention/linear_1 (2d×d)          blocks.i.cross_attn.{key,value}
    decoder/layer_i/attention/linear_2                 blocks.i.cross_attn.out
    .../layer_norm/{gamma,beta}                        *_ln.{weight,bias}
    .../ffn/linear_{0,1}                               blocks.i.mlp.{0,2}
    decoder/embeddings/weight                          decoder.token_embedding.weight
    decoder/position_encodings/encodings               decoder.positional_embedding

Whisper's key projections have no bias; the fused CTranslate2 bias holds zeros
there, which the converter checks rather than assumes. The result is loaded with
`strict=True`, so a variable left over or missing is an error, not a silent gap.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lorakit.errors import CheckpointError

from .ct2_format import CT2Model, read_ct2


def _layer_count(ct2: CT2Model, side: str) -> int:
    n = 0
    while f"{side}/layer_{n}/ffn/linear_0/weight" in ct2.variables:
        n += 1
    return n


def whisper_dims(ct2: CT2Model) -> dict:
    """`ModelDimensions` fields of the model a CTranslate2 Whisper spec describes."""
    if ct2.spec != "WhisperSpec":
        raise CheckpointError(f"the CTranslate2 model is a {ct2.spec}, not a WhisperSpec")
    vocab, n_text_state = ct2["decoder/embeddings/weight"].shape
    n_state, n_mels, _ = ct2["encoder/conv1/weight"].shape
    return {
        "n_mels": int(n_mels),
        "n_audio_ctx": int(ct2["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(n_state),
        "n_audio_head": ct2.scalar("encoder/num_heads"),
        "n_audio_layer": _layer_count(ct2, "encoder"),
        "n_vocab": int(vocab),
        "n_text_ctx": int(ct2["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(n_text_state),
        "n_text_head": ct2.scalar("decoder/num_heads"),
        "n_text_layer": _layer_count(ct2, "decoder"),
    }


def _linear(state: dict, ct2: CT2Model, src: str, dst: str) -> None:
    state[f"{dst}.weight"] = ct2[f"{src}/weight"]
    state[f"{dst}.bias"] = ct2[f"{src}/bias"]


def _norm(state: dict, ct2: CT2Model, src: str, dst: str) -> None:
    state[f"{dst}.weight"] = ct2[f"{src}/gamma"]
    state[f"{dst}.bias"] = ct2[f"{src}/beta"]


def _split(state: dict, ct2: CT2Model, src: str, dsts: list[str | None]) -> None:
    """A fused projection into its parts; `key` parts (None bias) must have a zero bias."""
    weights = ct2[f"{src}/weight"].chunk(len(dsts))
    biases = ct2[f"{src}/bias"].chunk(len(dsts))
    for dst, w, b in zip(dsts, weights, biases):
        state[f"{dst}.weight"] = w.clone()
        if dst.endswith(".key"):
            if b.abs().max() > 0:
                raise CheckpointError(f"CTranslate2 variable {src}/bias has a non-zero key "
                                      "bias, which openai-whisper's key projection lacks")
        else:
            state[f"{dst}.bias"] = b.clone()


def whisper_state_dict(ct2: CT2Model) -> dict[str, torch.Tensor]:
    """openai-whisper state dict (names as `Whisper.state_dict()`) from CTranslate2 variables."""
    state: dict[str, torch.Tensor] = {}
    for conv in ("conv1", "conv2"):
        state[f"encoder.{conv}.weight"] = ct2[f"encoder/{conv}/weight"]
        state[f"encoder.{conv}.bias"] = ct2[f"encoder/{conv}/bias"]
    state["encoder.positional_embedding"] = ct2["encoder/position_encodings/encodings"]
    state["decoder.token_embedding.weight"] = ct2["decoder/embeddings/weight"]
    state["decoder.positional_embedding"] = ct2["decoder/position_encodings/encodings"]
    _norm(state, ct2, "encoder/layer_norm", "encoder.ln_post")
    _norm(state, ct2, "decoder/layer_norm", "decoder.ln")
    for side in ("encoder", "decoder"):
        for i in range(_layer_count(ct2, side)):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            attn = f"{dst}.attn"
            _split(state, ct2, f"{src}/self_attention/linear_0",
                   [f"{attn}.query", f"{attn}.key", f"{attn}.value"])
            _linear(state, ct2, f"{src}/self_attention/linear_1", f"{attn}.out")
            _norm(state, ct2, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
            _linear(state, ct2, f"{src}/ffn/linear_0", f"{dst}.mlp.0")
            _linear(state, ct2, f"{src}/ffn/linear_1", f"{dst}.mlp.2")
            _norm(state, ct2, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")
            if side == "decoder":
                cross = f"{dst}.cross_attn"
                _linear(state, ct2, f"{src}/attention/linear_0", f"{cross}.query")
                _split(state, ct2, f"{src}/attention/linear_1", [f"{cross}.key", f"{cross}.value"])
                _linear(state, ct2, f"{src}/attention/linear_2", f"{cross}.out")
                _norm(state, ct2, f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
    return state


def convert_ct2_whisper(model_bin) -> dict:
    """A CTranslate2 Whisper `model.bin` as an openai-whisper checkpoint dict.

    The dict is what `whisper.load_model` reads, `{"dims": ..., "model_state_dict": ...}`,
    in the stored precision (float16 for faster-whisper's models). Before returning, it
    is loaded strictly into a `whisper.model.Whisper`, so a name left unmapped fails here.
    """
    from whisper.model import ModelDimensions, Whisper

    ct2 = read_ct2(model_bin)
    dims = whisper_dims(ct2)
    state = whisper_state_dict(ct2)
    model = Whisper(ModelDimensions(**dims))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{model_bin}: the converted weights do not fit "
                              f"Whisper({dims}): {err}") from None
    return {"dims": dims, "model_state_dict": {k: v.contiguous() for k, v in state.items()}}


def convert_ct2_dir(model_dir, out_path) -> Path:
    """Convert `model_dir/model.bin` and write it as an openai-whisper `.pt` at `out_path`."""
    from lorakit.atomic import atomic_write

    model_dir, out_path = Path(model_dir), Path(out_path)
    checkpoint = convert_ct2_whisper(model_dir / "model.bin")
    atomic_write(out_path, lambda tmp: torch.save(checkpoint, tmp))
    return out_path
