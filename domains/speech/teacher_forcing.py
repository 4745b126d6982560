"""Whisper's training objective: next-token cross-entropy under teacher forcing.

    sequence = <|sot|>… prompt + tokens of " text" + <|eot|>
    inputs   = sequence[:-1]        targets = sequence[1:], the prompt masked (-100)
    loss     = cross-entropy(decoder(log-mel(audio), inputs), targets)

One function for both places that train Whisper: the adapter module's training loop
(module.py) and the adult stage of the embedded base (base.py), so they optimise the
same loss and neither imports the other.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lorakit.domains.speech.whisper_model import log_mel
from lorakit.errors import LoraKitError


def transcription_tokenizer(model, language: str = "en"):
    """The tokenizer of `model` for transcription in `language`, without timestamps."""
    import whisper.tokenizer

    return whisper.tokenizer.get_tokenizer(model.is_multilingual,
                                           num_languages=model.num_languages,
                                           language=language, task="transcribe")


def decoder_tokens(tokenizer, texts: list[str], n_text_ctx: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs and next-token targets; the prompt is not a target (-100)."""
    prompt = list(tokenizer.sot_sequence_including_notimestamps)
    eot = tokenizer.eot
    seqs = [prompt + tokenizer.encode(" " + t.strip()) + [eot] for t in texts]
    longest = max(len(s) for s in seqs) - 1
    if longest > n_text_ctx:
        raise LoraKitError(f"a transcript is {longest} tokens, more than the decoder's "
                           f"{n_text_ctx}")
    inputs = torch.full((len(seqs), longest), eot, dtype=torch.long)
    targets = torch.full((len(seqs), longest), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        inputs[i, : len(s) - 1] = torch.tensor(s[:-1])
        targets[i, len(prompt) - 1: len(s) - 1] = torch.tensor(s[len(prompt):])
    return inputs, targets


def cross_entropy(model, tokenizer, audio: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """Teacher-forced next-token cross-entropy of `model` on (audio, transcript) pairs."""
    dims = model.dims
    mel = log_mel(audio, dims.n_audio_ctx, dims.n_mels)
    inputs, targets = decoder_tokens(tokenizer, texts, dims.n_text_ctx)
    logits = model(mel, inputs.to(mel.device))
    return F.cross_entropy(logits.transpose(1, 2).float(), targets.to(mel.device))
