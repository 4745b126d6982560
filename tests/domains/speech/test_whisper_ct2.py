"""The CTranslate2 reader and the CTranslate2 → openai-whisper converter.

The helpers at the top write model.bin files: the format as a specification.
`whisper_to_ct2` is the inverse of the converter's name mapping, written from the
other side (fuse q/k/v, rename), so a round trip checks every name and every split.
The last tests use the real tiny.en weights the converter built into the cache.
"""
from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from lorakit.domains.speech.ct2_format import read_ct2
from lorakit.domains.speech.whisper_ct2 import convert_ct2_dir, convert_ct2_whisper
from lorakit.errors import CheckpointError

TYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2,
            np.dtype(np.int32): 3, np.dtype(np.float16): 4}


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None,
              spec: str = "WhisperSpec", version: int = 6) -> Path:
    out = [struct.pack("<I", version), _string(spec), struct.pack("<I", 3),
           struct.pack("<I", len(variables))]
    for name, value in variables.items():
        value = np.ascontiguousarray(value)
        out += [_string(name), struct.pack("<B", value.ndim),
                *(struct.pack("<I", d) for d in value.shape),
                struct.pack("<B", TYPE_IDS[value.dtype]), struct.pack("<I", value.nbytes),
                value.tobytes()]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_string(alias), _string(target)]
    path.write_bytes(b"".join(out))
    return path


def whisper_to_ct2(model) -> dict[str, np.ndarray]:
    s = {k: v.detach().numpy().astype(np.float16) for k, v in model.state_dict().items()}
    d = model.dims
    v: dict[str, np.ndarray] = {
        "encoder/conv1/weight": s["encoder.conv1.weight"], "encoder/conv1/bias": s["encoder.conv1.bias"],
        "encoder/conv2/weight": s["encoder.conv2.weight"], "encoder/conv2/bias": s["encoder.conv2.bias"],
        "encoder/position_encodings/encodings": s["encoder.positional_embedding"],
        "encoder/layer_norm/gamma": s["encoder.ln_post.weight"],
        "encoder/layer_norm/beta": s["encoder.ln_post.bias"],
        "encoder/num_heads": np.array(d.n_audio_head, dtype=np.int16),
        "decoder/num_heads": np.array(d.n_text_head, dtype=np.int16),
        "decoder/pre_norm": np.array(1, dtype=np.int8),
        "decoder/embeddings/weight": s["decoder.token_embedding.weight"],
        "decoder/position_encodings/encodings": s["decoder.positional_embedding"],
        "decoder/layer_norm/gamma": s["decoder.ln.weight"],
        "decoder/layer_norm/beta": s["decoder.ln.bias"],
    }
    zeros = np.zeros(d.n_audio_state, dtype=np.float16)
    for side, n in (("encoder", d.n_audio_layer), ("decoder", d.n_text_layer)):
        for i in range(n):
            p, q = f"{side}.blocks.{i}", f"{side}/layer_{i}"
            a = f"{p}.attn"
            v[f"{q}/self_attention/linear_0/weight"] = np.concatenate(
                [s[f"{a}.query.weight"], s[f"{a}.key.weight"], s[f"{a}.value.weight"]])
            v[f"{q}/self_attention/linear_0/bias"] = np.concatenate(
                [s[f"{a}.query.bias"], zeros, s[f"{a}.value.bias"]])
            v[f"{q}/self_attention/linear_1/weight"] = s[f"{a}.out.weight"]
            v[f"{q}/self_attention/linear_1/bias"] = s[f"{a}.out.bias"]
            v[f"{q}/self_attention/layer_norm/gamma"] = s[f"{p}.attn_ln.weight"]
            v[f"{q}/self_attention/layer_norm/beta"] = s[f"{p}.attn_ln.bias"]
            for j, k in ((0, 0), (1, 2)):
                v[f"{q}/ffn/linear_{j}/weight"] = s[f"{p}.mlp.{k}.weight"]
                v[f"{q}/ffn/linear_{j}/bias"] = s[f"{p}.mlp.{k}.bias"]
            v[f"{q}/ffn/layer_norm/gamma"] = s[f"{p}.mlp_ln.weight"]
            v[f"{q}/ffn/layer_norm/beta"] = s[f"{p}.mlp_ln.bias"]
            if side == "decoder":
                c = f"{p}.cross_attn"
                v[f"{q}/attention/linear_0/weight"] = s[f"{c}.query.weight"]
                v[f"{q}/attention/linear_0/bias"] = s[f"{c}.query.bias"]
                v[f"{q}/attention/linear_1/weight"] = np.concatenate(
                    [s[f"{c}.key.weight"], s[f"{c}.value.weight"]])
                v[f"{q}/attention/linear_1/bias"] = np.concatenate([zeros, s[f"{c}.value.bias"]])
                v[f"{q}/attention/linear_2/weight"] = s[f"{c}.out.weight"]
                v[f"{q}/attention/linear_2/bias"] = s[f"{c}.out.bias"]
                v[f"{q}/attention/layer_norm/gamma"] = s[f"{p}.cross_attn_ln.weight"]
                v[f"{q}/attention/layer_norm/beta"] = s[f"{p}.cross_attn_ln.bias"]
    return v


def tiny_random_whisper(seed: int = 0):
    """A 2-layer Whisper with small dims and random weights (fp16-representable)."""
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(seed)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=40, n_audio_state=32, n_audio_head=2,
                           n_audio_layer=2, n_vocab=51864, n_text_ctx=16, n_text_state=32,
                           n_text_head=2, n_text_layer=2)
    model = Whisper(dims)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
        for t in model.state_dict().values():   # stored as float16, as faster-whisper does
            t.copy_(t.half().float())
    return model


# --- the reader ---------------------------------------------------------------------------
def test_reader_returns_tensors_scalars_and_aliases(tmp_path):
    weight = np.arange(6, dtype=np.float16).reshape(2, 3)
    path = write_ct2(tmp_path / "model.bin",
                     {"a/weight": weight, "a/heads": np.array(6, dtype=np.int16),
                      "a/flag": np.array(1, dtype=np.int8),
                      "b/table": np.ones((2, 2), dtype=np.float32)},
                     aliases={"c/weight": "a/weight"})
    model = read_ct2(path)
    assert model.spec == "WhisperSpec" and model.binary_version == 6
    assert model["a/weight"].dtype == torch.float16
    assert model["a/weight"].tolist() == weight.tolist()
    assert model.scalar("a/heads") == 6 and model.scalar("a/flag") == 1
    assert model["c/weight"] is model["a/weight"]
    assert model["b/table"].dtype == torch.float32


def test_reader_names_a_truncated_file(tmp_path):
    path = write_ct2(tmp_path / "model.bin", {"w": np.ones((4, 4), dtype=np.float16)})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        read_ct2(path)


def test_reader_refuses_an_unknown_binary_version(tmp_path):
    path = write_ct2(tmp_path / "model.bin", {"w": np.ones(2, dtype=np.float16)}, version=42)
    with pytest.raises(CheckpointError, match="binary version 42"):
        read_ct2(path)


def test_reader_refuses_a_file_that_is_not_ct2(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    with pytest.raises(CheckpointError):
        read_ct2(path)


# --- the converter ------------------------------------------------------------------------
def test_converter_round_trips_every_weight_and_loads_strictly(tmp_path):
    model = tiny_random_whisper()
    write_ct2(tmp_path / "model.bin", whisper_to_ct2(model),
              aliases={"decoder/projection/weight": "decoder/embeddings/weight"})
    checkpoint = convert_ct2_whisper(tmp_path / "model.bin")
    assert checkpoint["dims"] == vars(model.dims)
    ours = checkpoint["model_state_dict"]
    assert set(ours) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(ours[key].float(), value), key


def test_converter_refuses_a_missing_variable(tmp_path):
    variables = whisper_to_ct2(tiny_random_whisper())
    del variables["decoder/layer_1/attention/linear_2/bias"]
    write_ct2(tmp_path / "model.bin", variables)
    with pytest.raises(KeyError, match="linear_2/bias"):
        convert_ct2_whisper(tmp_path / "model.bin")


def test_converter_refuses_a_non_zero_key_bias(tmp_path):
    variables = whisper_to_ct2(tiny_random_whisper())
    variables["encoder/layer_0/self_attention/linear_0/bias"][40] = 1.0
    write_ct2(tmp_path / "model.bin", variables)
    with pytest.raises(CheckpointError, match="key bias"):
        convert_ct2_whisper(tmp_path / "model.bin")


def test_converter_refuses_another_spec(tmp_path):
    write_ct2(tmp_path / "model.bin", {"w": np.ones(2, dtype=np.float16)}, spec="TransformerSpec")
    with pytest.raises(CheckpointError, match="TransformerSpec"):
        convert_ct2_dir(tmp_path, tmp_path / "out.pt")


# --- the real tiny.en -----------------------------------------------------------------------
def espeak(text: str, path: Path) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: the set-up installs it (apt-get install espeak-ng)")
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True)
    return path


def test_converted_tiny_en_loads_strictly_with_tiny_en_dims(tiny_en):
    from whisper.model import ModelDimensions, Whisper

    checkpoint = torch.load(tiny_en, weights_only=True)
    assert checkpoint["dims"] == {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384,
                                  "n_audio_head": 6, "n_audio_layer": 4, "n_vocab": 51864,
                                  "n_text_ctx": 448, "n_text_state": 384, "n_text_head": 6,
                                  "n_text_layer": 4}
    model = Whisper(ModelDimensions(**checkpoint["dims"]))
    result = model.load_state_dict(checkpoint["model_state_dict"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_converted_tiny_en_transcribes_real_speech(tiny_en, tmp_path):
    from lorakit.domains.speech.audio import read_audio
    from lorakit.domains.speech.metrics import error_rates
    from lorakit.domains.speech.whisper_model import load_whisper, log_mel, transcribe

    text = "The quick brown fox jumps over the lazy dog."
    audio = torch.from_numpy(read_audio(espeak(text, tmp_path / "fox.wav")))
    full = load_whisper(tiny_en)          # 30 s context, as OpenAI ships it
    hyp = transcribe(full, log_mel(audio, 1500)[None], max_tokens=30)
    assert error_rates([text], hyp)["wer"] <= 0.25, hyp


def test_short_context_takes_exactly_two_frames_per_position(tiny_en):
    from lorakit.domains.speech.whisper_model import load_whisper, log_mel

    model = load_whisper(tiny_en, n_audio_ctx=150)
    assert model.encoder.positional_embedding.shape == (150, 384)
    full = torch.load(tiny_en, weights_only=True)["model_state_dict"]
    assert torch.equal(model.encoder.positional_embedding,
                       full["encoder.positional_embedding"][:150].float())
    mel = log_mel(torch.zeros(16000), 150)
    assert mel.shape == (80, 300)
    assert model.encoder(mel[None]).shape == (1, 150, 384)
    with pytest.raises(AssertionError, match="incorrect audio shape"):
        model.encoder(mel[None, :, :298])
