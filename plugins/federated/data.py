"""Non-IID client data: one domain per client, or a Dirichlet(α) split over (domain, label).

`dirichlet_split` works on any labelled, domain-tagged set. The loaders here serve, by the
run's `base`:

- "tiny": a small synthetic four-domain token task (the tiny random BERT's stand-in for
  the sentiment data): in domain d a positive sequence is marked by token 10 + d in
  about half its positions;
- "minilm": the four-domain sentiment data of lorakit.domains.text (VADER's human-rated
  movie snippets, tweets, Amazon reviews, NYT editorials; label = mean rating > 0.5),
  `train-per-domain` training and `test-per-domain` test sentences per domain, MiniLM's
  tokenizer, padded with id 0 (the model's attention mask is `ids != 0`).
"""
from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from .config import FederatedConfig

DOMAINS = 4
SENTIMENT_DOMAINS = ("movies", "tweets", "amazon", "nyt")
MAX_TOKENS = 48      # movie snippets average 28 MiniLM tokens; a few tweets run longer


def dirichlet_split(labels, domains, clients: int, alpha: float, seed: int = 0) -> list[list[int]]:
    """Indices per client. alpha <= 0: client c gets domain c mod D (one domain each);
    otherwise each (domain, label) group is shared out by proportions ~ Dirichlet(α)."""
    labels, domains = np.asarray(labels), np.asarray(domains)
    out: list[list[int]] = [[] for _ in range(clients)]
    if alpha <= 0:
        doms = sorted(set(domains.tolist()))
        for c in range(clients):
            out[c] = np.flatnonzero(domains == doms[c % len(doms)]).tolist()
        return out
    rng = np.random.default_rng(seed)
    for d in sorted(set(domains.tolist())):
        for y in sorted(set(labels.tolist())):
            idx = rng.permutation(np.flatnonzero((domains == d) & (labels == y)))
            cuts = (np.cumsum(rng.dirichlet([alpha] * clients))[:-1] * len(idx)).astype(int)
            for c, part in enumerate(np.split(idx, cuts)):
                out[c].extend(part.tolist())
    return out


def synthetic(n: int = 256, seq: int = 12, seed: int = 0):
    """(ids, labels, domains): in domain d a positive sequence has about half its tokens
    replaced by the marker 10 + d, a negative one none (token 1 leads every sequence)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, 60, (n, seq), generator=g)
    domains = torch.arange(n) % DOMAINS
    labels = torch.randint(0, 2, (n,), generator=g)
    marked = (torch.rand(n, seq, generator=g) < 0.5) & (labels[:, None] == 1)
    ids = torch.where(marked, (10 + domains)[:, None].expand(n, seq), ids)
    ids[:, 0] = 1
    return ids, labels, domains


@lru_cache(maxsize=4)
def sentiment_tensors(split: str, per_domain: int, seed: int = 0):
    """(ids, labels, domains) of `per_domain` sentences of each sentiment domain's split,
    drawn by `seed`, tokenised for MiniLM."""
    from transformers import AutoTokenizer

    from lorakit.domains.text.minilm import minilm_dir
    from lorakit.domains.text.sentiment import sentiment

    data, rng = sentiment(), random.Random(seed)
    texts, labels, domains = [], [], []
    for d, name in enumerate(SENTIMENT_DOMAINS):
        rows = list(data[name][split])
        rng.shuffle(rows)
        for text, y in rows[:per_domain]:
            texts.append(text)
            labels.append(y)
            domains.append(d)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    ids = tokenizer(texts, truncation=True, max_length=MAX_TOKENS, padding="longest",
                    return_tensors="pt")["input_ids"]
    return ids, torch.tensor(labels), torch.tensor(domains)


def train_set(cfg: FederatedConfig):
    if cfg.base == "minilm":
        return sentiment_tensors("train", cfg.train_per_domain, cfg.seed)
    return synthetic(seed=cfg.seed)


def client_loader(cfg: FederatedConfig, partition: int, partitions: int) -> tuple[DataLoader, int]:
    """Client `partition`'s shuffled batches of its share of the training set, and its size."""
    ids, labels, domains = train_set(cfg)
    parts = dirichlet_split(labels, domains, partitions, cfg.dirichlet, cfg.seed)
    idx = torch.tensor(parts[partition], dtype=torch.long)
    data = TensorDataset(ids[idx], labels[idx])
    g = torch.Generator().manual_seed(cfg.seed + partition)
    return DataLoader(data, batch_size=cfg.batch_size, shuffle=True, generator=g), len(idx)


def held_out(cfg: FederatedConfig, n: int = 128):
    """Held-out examples from the same four domains, of the run's `eval-split`: the
    sentiment test (or validation) splits, `test-per-domain` sentences each; for the tiny
    base, another generator seed per split."""
    if cfg.base == "minilm":
        return sentiment_tensors(cfg.eval_split, cfg.test_per_domain, 0)
    return synthetic(n, seed=cfg.seed + (10_000 if cfg.eval_split == "test" else 20_000))


class ClientData(LightningDataModule):
    """One client's partition, for `lorakit federated fit` (a single client, no server).
    When the module trains with DP-SGD (`model.dp.enabled`) the batches are Poisson samples
    at q = batch_size / n (Opacus's DPDataLoader), the sampling the privacy accountant
    assumes; otherwise shuffled batches of `batch_size`."""

    def __init__(self, partition: int = 0, partitions: int = 2, dirichlet: float = 0.0,
                 batch_size: int = 16, seed: int = 0, base: str = "tiny",
                 train_per_domain: int = 256) -> None:
        super().__init__()
        self.cfg = FederatedConfig(dirichlet=dirichlet, batch_size=batch_size, seed=seed,
                                   base=base, train_per_domain=train_per_domain)
        self.partition, self.partitions = partition, partitions

    def train_dataloader(self) -> DataLoader:
        loader = client_loader(self.cfg, self.partition, self.partitions)[0]
        module = self.trainer.lightning_module if self.trainer is not None else None
        if getattr(getattr(module, "dp", None), "enabled", False):
            from .privacy import poisson_loader
            loader = poisson_loader(loader, self.cfg.seed + self.partition + 1)
        return loader
