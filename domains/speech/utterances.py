"""Utterances as a torch Dataset: each clip read, cut to the encoder's context, batched.

Shared by the embedded base's recipe (`adult_base`) and the s2lora-whisper data module.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from lorakit.domains.speech.audio import read_audio
from lorakit.domains.speech.manifest import Utterance


class UtteranceDataset(Dataset):
    def __init__(self, utterances: list[Utterance], name: str, max_samples: int) -> None:
        self.utterances, self.name, self.max_samples = utterances, name, max_samples

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int) -> dict:
        u = self.utterances[i]
        audio = read_audio(u.audio, u.where)[: self.max_samples]
        return {"audio": torch.from_numpy(audio), "text": u.text, "path": str(u.audio),
                "set": self.name}


def collate(items: list[dict]) -> dict:
    longest = max(len(item["audio"]) for item in items)
    audio = torch.zeros(len(items), longest)
    for i, item in enumerate(items):
        audio[i, : len(item["audio"])] = item["audio"]
    return {"audio": audio, **{k: [item[k] for item in items] for k in ("text", "path", "set")}}
