"""openai-whisper models for short clips: load a checkpoint, shorten its audio context,
make its log-mel input, decode with a capped length.

Whisper's encoder sees 30 s (1500 positions, 3000 mel frames) however short the clip.
For clips of a few seconds that is 10× the compute; the encoder's sinusoidal position
table can simply be cut: `n_audio_ctx = 150` is 3 s, and the mel input must then be
exactly 2·n_audio_ctx frames (the second convolution has stride 2). Pretrained weights
never saw the shorter context end, and a decoder that sees no end of speech tends to
repeat itself, so decoding is capped at `max_tokens`.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from lorakit.errors import CheckpointError

SAMPLE_RATE = 16000
HOP = 160  # samples per mel frame (10 ms), whisper.audio.HOP_LENGTH


def context_samples(n_audio_ctx: int) -> int:
    """Audio samples that fill an encoder context of `n_audio_ctx` positions."""
    return 2 * n_audio_ctx * HOP


def _read_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"whisper checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a readable openai-whisper checkpoint ({type(err).__name__}: "
            f"{str(err)[:200]}). Expected the .pt file whisper.load_model reads: a dict "
            "{'dims': {...}, 'model_state_dict': {...}}.") from None
    if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= set(checkpoint):
        keys = sorted(checkpoint)[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path} is not an openai-whisper checkpoint: found {keys}, expected a dict with "
            "'dims' and 'model_state_dict' (the .pt file whisper.load_model reads). "
            "A Hugging Face or CTranslate2 Whisper needs converting first.")
    return checkpoint


def load_whisper(path, n_audio_ctx: int | None = None):
    """A float32 `whisper.model.Whisper` from an openai-whisper `.pt`, loaded strictly.

    With `n_audio_ctx`, the encoder context is shortened to that many positions.
    """
    from whisper.model import ModelDimensions, Whisper

    path = Path(path)
    checkpoint = _read_checkpoint(path)
    try:
        dims = ModelDimensions(**checkpoint["dims"])
    except TypeError as err:
        raise CheckpointError(f"{path}: its 'dims' are not whisper ModelDimensions ({err})") \
            from None
    state = dict(checkpoint["model_state_dict"])
    if n_audio_ctx is not None:
        dims, state = shorten_audio_context(dims, state, n_audio_ctx, source=str(path))
    model = Whisper(dims)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: its weights do not fit Whisper({asdict(dims)}): "
                              f"{str(err)[:400]}") from None
    return model.float().eval()


def shorten_audio_context(dims, state: dict, n_audio_ctx: int, source: str = "checkpoint"):
    """(dims, state) with the encoder context cut to `n_audio_ctx` positions."""
    from whisper.model import ModelDimensions

    if not 1 <= n_audio_ctx <= dims.n_audio_ctx:
        raise CheckpointError(f"n_audio_ctx={n_audio_ctx} is outside 1..{dims.n_audio_ctx}, "
                              f"the context of {source}")
    key = "encoder.positional_embedding"
    if key not in state:
        raise CheckpointError(f"{source} has no {key}: not an openai-whisper state dict")
    state = dict(state)
    state[key] = state[key][:n_audio_ctx].clone()
    return ModelDimensions(**{**asdict(dims), "n_audio_ctx": n_audio_ctx}), state


def log_mel(audio: torch.Tensor, n_audio_ctx: int, n_mels: int = 80) -> torch.Tensor:
    """(…, samples) audio at 16 kHz → (…, n_mels, 2·n_audio_ctx) log-mel, padded or cut."""
    from whisper.audio import log_mel_spectrogram, pad_or_trim

    audio = pad_or_trim(audio, context_samples(n_audio_ctx))
    mel = log_mel_spectrogram(audio, n_mels=n_mels)
    return mel[..., : 2 * n_audio_ctx]


TOKENS_PER_SECOND = 4   # English speech runs ~2.5-3 words, ~3.5-4 tokens, a second
FRAMES_PER_SECOND = 50  # encoder positions per second of audio


def decoding_budget(n_audio_ctx: int, n_text_ctx: int) -> int:
    """Tokens a clip filling the encoder context can hold: 4 a second, at most Whisper's own
    limit (half the text context). 3 s gives 12, the guard that keeps a short-context
    model from looping; 30 s gives 120, room for several real sentences."""
    seconds = n_audio_ctx / FRAMES_PER_SECOND
    return max(1, min(n_text_ctx // 2, round(TOKENS_PER_SECOND * seconds)))


@torch.no_grad()
def transcribe(model, mel: torch.Tensor, max_tokens: int, language: str = "en") -> list[str]:
    """Greedy transcripts of a batch of log-mels, at most `max_tokens` tokens each."""
    import whisper

    options = whisper.DecodingOptions(
        language=language, without_timestamps=True,
        sample_len=max_tokens, fp16=False)
    was_training = model.training
    model.eval()
    results = whisper.decode(model, mel.to(next(model.parameters()).device), options)
    model.train(was_training)
    return [r.text.strip() for r in results]
