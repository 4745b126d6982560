"""A causal language model as a classifier through a prompt, trained the way a lorakit user
trains one (`AdapterModule` + `lightning.Trainer.fit`), and its perplexity on held-out prose.

    "Review: <sentence>\\nSentiment:"  ─► SmolLM2 ─► next token: " negative" | " positive"

The loss is the ordinary next-token cross-entropy over the whole vocabulary at the answer
position (supervised fine-tuning on the completion); accuracy compares the two answer
tokens' logits. Prompts are padded on the left, so the answer position is the last one
for every row and only its logits are computed (`logits_to_keep=1`: the 49,152-word output
layer is a fifth of SmolLM2's compute per token); position ids count real tokens only, so
a padded prompt reads as it does alone.

`perplexity` is the forgetting measure: exp of the mean next-token loss over fixed
chunks of held-out text, computed with whatever adapters are active.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lorakit.config import LoRAConfig

from .sentence_classifier import RecordingModule

PROMPT = "Review: {text}\nSentiment:"
ANSWERS = (" negative", " positive")   # label 0, label 1


class PromptClassifier(RecordingModule):
    """A causal LM answering a prompt with one of `answer_ids`; `config` None trains every
    weight of the LM."""

    def __init__(self, lm: nn.Module, config: LoRAConfig | None, answer_ids: list[int],
                 lr: float = 1e-3, output_dir: str | None = None) -> None:
        super().__init__(lr=lr, output_dir=output_dir)
        self.lm = lm
        if config is None:
            lm.requires_grad_(True)
        else:
            self.attach_adapters(lm, config)
        self.register_buffer("answer_ids", torch.tensor(answer_ids), persistent=False)

    def forward(self, batch: dict) -> torch.Tensor:
        """The next-token logits (batch × vocabulary) after each prompt."""
        mask = batch["attention_mask"]
        out = self.lm(input_ids=batch["input_ids"], attention_mask=mask,
                      position_ids=(mask.cumsum(-1) - 1).clamp_min(0), logits_to_keep=1)
        return out.logits[:, -1]

    def loss(self, batch: dict) -> torch.Tensor:
        return F.cross_entropy(self(batch), self.answer_ids[batch["labels"]])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.loss(batch)

    def evaluate(self, batch: dict) -> tuple[torch.Tensor, int, int]:
        logits = self(batch)
        loss = F.cross_entropy(logits, self.answer_ids[batch["labels"]])
        correct = int((logits[:, self.answer_ids].argmax(-1) == batch["labels"]).sum())
        return loss, correct, len(batch["labels"])


def answer_ids(tokenizer) -> list[int]:
    """The token id of each answer; an answer that is not one token is refused."""
    ids = []
    for answer in ANSWERS:
        pieces = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            raise ValueError(f"the answer {answer!r} is {len(pieces)} tokens for this "
                             "tokenizer; the prompt classifier needs one token per answer")
        ids.append(pieces[0])
    return ids


def encode_prompts(tokenizer, examples: list[tuple[str, int]], max_length: int) -> list[dict]:
    """Each (sentence, label) as a prompt of at most `max_length` tokens: the sentence is
    cut so that the prompt's ending ("\\nSentiment:") always survives."""
    head, tail = PROMPT.split("{text}")
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    texts = tokenizer([head + text for text, _ in examples], add_special_tokens=False,
                      truncation=True, max_length=max_length - len(tail_ids))["input_ids"]
    return [{"input_ids": torch.tensor(ids + tail_ids), "labels": y}
            for ids, (_, y) in zip(texts, examples)]


def collate_left(items: list[dict], pad_id: int) -> dict:
    longest = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), longest), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it["input_ids"])
        ids[row, longest - n:] = it["input_ids"]
        mask[row, longest - n:] = 1
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.tensor([it["labels"] for it in items])}


def prompt_loader(items: list[dict], batch_size: int, pad_id: int,
                  seed: int | None = None) -> DataLoader:
    """Shuffled by `seed` for training; seed None: in length order, for evaluation."""
    def collate(batch):
        return collate_left(batch, pad_id)
    if seed is None:
        items = sorted(items, key=lambda it: len(it["input_ids"]))
        return DataLoader(items, batch_size=batch_size, collate_fn=collate)
    return DataLoader(items, batch_size=batch_size, shuffle=True, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed), drop_last=True)


def text_chunks(tokenizer, paragraphs: list[str], n: int, length: int) -> torch.Tensor:
    """The first `n` consecutive chunks of `length` tokens of the paragraphs, joined by
    blank lines (n × length); fewer tokens than that is refused."""
    ids: list[int] = []
    for paragraph in paragraphs:
        ids += tokenizer(paragraph + "\n\n", add_special_tokens=False)["input_ids"]
        if len(ids) >= n * length:
            return torch.tensor(ids[:n * length]).view(n, length)
    raise ValueError(f"the text has {len(ids)} tokens, fewer than {n} chunks of {length}")


@torch.no_grad()
def perplexity(lm: nn.Module, chunks: torch.Tensor, batch_size: int = 8) -> float:
    """exp(mean next-token loss) of `lm` over the rows of `chunks`, in eval mode."""
    was_training = lm.training
    lm.eval()
    total, count = 0.0, 0
    for rows in chunks.split(batch_size):
        logits = lm(input_ids=rows).logits[:, :-1]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1),
                                 reduction="sum").item()
        count += rows[:, 1:].numel()
    lm.train(was_training)
    return math.exp(total / count)
