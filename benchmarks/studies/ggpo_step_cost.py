"""What LoRA-GGPO's perturbed second pass costs per training step, against plain LoRA.

    python -m lorakit.benchmarks.studies.ggpo_step_cost [--rounds 5] [--steps 20] [--threads 1]

One transformers BERT classifier (hidden 128, 2 layers, batch 16 × 32 tokens), rank-8
adapters on query and value, trained through `AdapterModule` and Lightning's `fit` (the
path a plugin runs): the step time is measured from `on_train_batch_start` to
`on_train_batch_end`, so it holds the forward, backward and optimizer step (and, for
GGPO, the perturbation and the second forward/backward). LoRA, GGPO and ALLoRA (whose
hook rescales gradients once per step) are timed in turns in one process; each figure
is the median step time over rounds, and the ratios are to LoRA's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import lorakit
from lorakit.quiet import quiet_third_party
from lorakit.training.module import AdapterModule

METHODS = ("lora", "ggpo", "allora")


SMALL_BERT = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 512}


class Classifier(AdapterModule):
    """A random transformers BERT classifier (`bert`: BertConfig fields) with one adapter."""

    def __init__(self, config: lorakit.LoRAConfig, bert: dict | None = None):
        super().__init__(lr=1e-3, output_dir="/tmp/lorakit-step-cost")
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=1000, max_position_embeddings=128,
                         **(bert or SMALL_BERT))
        self.model = BertForSequenceClassification(cfg)
        self.attach_adapters(self.model, config)

    def training_step(self, batch, _):
        ids, labels = batch
        return F.cross_entropy(self.model(input_ids=ids).logits, labels)

    def on_fit_end(self) -> None:   # timing only: no adapter file
        pass


class StepTimer(pl.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, *args):
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args):
        self.times.append(time.perf_counter() - self.start)


def step_time(config: lorakit.LoRAConfig, steps: int, bert: dict | None = None,
              tokens: int = 32) -> float:
    """Median step time of `fit` over `steps` batches of 16 × `tokens` random tokens."""
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randint(0, 1000, (16 * steps, tokens), generator=g),
                                    torch.randint(0, 2, (16 * steps,), generator=g)),
                      batch_size=16)
    timer = StepTimer()
    pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False,
               callbacks=[timer]).fit(Classifier(config, bert), data)
    return statistics.median(timer.times[2:])      # the first steps warm up


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    quiet_third_party()
    torch.set_num_threads(a.threads)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(a.rounds):
        for m in (METHODS if r % 2 == 0 else METHODS[::-1]):
            config = lorakit.LoRAConfig(rank=8, method=m, targets=["*.query", "*.value"])
            times[m].append(step_time(config, a.steps))
    med = {m: statistics.median(t) for m, t in times.items()}
    result = {"step_ms": {m: round(1000 * t, 2) for m, t in med.items()},
              "ggpo_over_lora": round(med["ggpo"] / med["lora"], 3),
              "allora_over_lora": round(med["allora"] / med["lora"], 3),
              "rounds": a.rounds, "steps": a.steps, "threads": a.threads}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
