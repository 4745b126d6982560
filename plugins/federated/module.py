"""The client's LightningModule: a sequence classifier whose only trained tensors are the
adapter's (and the head's), trained by plain steps or DP-SGD steps (privacy.py).

The same module is a Flower client's local learner (`from_cfg`, client_app.py) and
`lorakit federated fit`'s one client alone (LightningCLI builds it from default.yaml).
"""
from __future__ import annotations

import json
import math
import zlib

import torch
from lightning.pytorch.utilities import rank_zero_info

from lorakit import LoRAConfig
from lorakit.training.module import AdapterModule

from .aggregation import METHOD, check_strategy
from .config import BASES, DPConfig, FederatedConfig, RunConfigError, check_choice
from .privacy import epsilon, per_sample_gradients, privatize, solve_noise


def make_base(base: str, seed: int) -> torch.nn.Module:
    """The frozen base every client and the server build alike: one base, one head (seeded)."""
    check_choice("base", base, BASES)
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(seed)
    if base == "minilm":
        from lorakit.domains.text.minilm import minilm_dir
        return BertForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2).eval()
    bert = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=32, num_labels=2,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(bert).eval()


class ClientModule(AdapterModule):
    """A sequence classifier whose only trained tensors are the adapter's (and the head's).
    Built by `from_cfg` (a federated client) it writes no files: its tensors go to the
    server; under `lorakit federated fit` it saves its adapter like any module.

    With `dp.enabled` each step is a DP-SGD step (privacy.py): per-sample gradients of the
    trainable tensors, each clipped to `dp.max_grad_norm`, summed, Gaussian noise of std
    σ·C added, divided by the expected batch size (`expected_batch`, q·n from the Poisson
    sampling rate q). A federated client sets σ and q per round (`make_private`); under
    `lorakit federated fit` the module plans its own run when training starts (ClientData
    then samples Poisson batches): σ solved for `dp.target_epsilon` over the run's steps
    (`trainer.estimated_stepping_batches`) at its q, or `dp.noise_multiplier`, and at the
    end the ε spent is logged (`dp/epsilon`) and kept in `epsilon_spent`.

    Args:
        strategy: fedavg, ffa, fair or fedsb; picks the LoRA variant the client trains
            (lora, ffa_lora, lora, lora_sb).
        rank: adapter rank r.
        alpha: adapter alpha (scale alpha / r).
        lr: learning rate (AdamW).
        seed: seed of the base head and the shared adapter init.
        base: tiny (random BERT, synthetic four-domain tokens) or minilm (all-MiniLM-L6-v2).
        head: train the classification head too (modules_to_save).
        dp: per-client DP-SGD settings.
    """

    federated = False

    def __init__(self, strategy: str = "fedavg", rank: int = 4, alpha: float = 8.0,
                 lr: float = 1e-2, seed: int = 0, base: str = "tiny", head: bool = True,
                 dp: DPConfig | None = None) -> None:
        super().__init__(lr=lr)
        self.dp = dp or DPConfig()
        self.automatic_optimization = not self.dp.enabled   # the DP step is written out below
        self.noise_multiplier = self.dp.noise_multiplier
        self.expected_batch: float | None = None
        self.noise_generator: torch.Generator | None = None
        self.sample_rate: float | None = None
        self.epsilon_spent: float | None = None
        self.model = make_base(base, seed)
        for p in self.model.parameters():
            p.requires_grad_(False)
        torch.manual_seed(seed + 1)     # one shared adapter init (FFA's A, SB's A and B)
        self.attach_adapters(self.model, LoRAConfig(
            rank=rank, alpha=alpha, targets=["*.query", "*.value"],
            method=METHOD[check_strategy(strategy)],
            modules_to_save=["classifier"] if head else []))

    @classmethod
    def from_cfg(cls, cfg: FederatedConfig) -> ClientModule:
        module = cls(cfg.strategy, cfg.rank, cfg.alpha, cfg.lr, cfg.seed, cfg.base,
                     bool(cfg.head), cfg.dp)
        module.federated = True
        return module

    def forward(self, ids):
        """Logits; id 0 is padding. The mask goes in as the additive 4-D form transformers
        passes through unchanged: the 2-D form is checked with data-dependent control flow
        (`mask.all()`), which `vmap`'s per-sample gradients (DP) cannot run."""
        pad = (ids == 0)[:, None, None, :]
        mask = torch.zeros(pad.shape, dtype=self.model.dtype).masked_fill(
            pad, torch.finfo(self.model.dtype).min)
        return self.model(input_ids=ids, attention_mask=mask).logits

    def training_step(self, batch, batch_idx):
        ids, y = batch
        if not self.dp.enabled:
            return torch.nn.functional.cross_entropy(self(ids), y)
        per_sample = per_sample_gradients(self, torch.nn.functional.cross_entropy, ids, y)
        noisy = privatize(per_sample, self.dp.max_grad_norm, self.noise_multiplier,
                          self.expected_batch or len(ids), self.noise_generator)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        params = dict(self.named_parameters())
        for name, g in noisy.items():
            params[name].grad = g
        optimizer.step()
        return None

    def on_train_start(self) -> None:
        if self.dp.enabled and not self.federated:
            loader = self.trainer.train_dataloader
            n = len(loader.dataset)
            q = getattr(loader, "sample_rate", None) or min(1.0, loader.batch_size / n)
            steps = self.trainer.estimated_stepping_batches
            if math.isinf(steps) and self.dp.target_epsilon > 0:
                raise RunConfigError("federated fit: dp.target_epsilon needs a run of known "
                                     "length: set trainer.max_steps or trainer.max_epochs")
            steps = 0 if math.isinf(steps) else int(steps)
            self.noise_multiplier = solve_noise(self.dp, q, steps)
            self.sample_rate, self.expected_batch = q, q * n
            plan = ("no step limit" if not steps else
                    f"ε = {epsilon(self.noise_multiplier, q, steps, self.dp.delta):.3f} "
                    f"after {steps} steps at δ = {self.dp.delta}")
            rank_zero_info(f"federated fit: DP-SGD with σ = {self.noise_multiplier:.3f}, "
                           f"q = {q:.4f}, C = {self.dp.max_grad_norm}: {plan}")

    def on_train_end(self) -> None:
        if self.dp.enabled and not self.federated:
            self.epsilon_spent = epsilon(self.noise_multiplier, self.sample_rate,
                                         self.global_step, self.dp.delta)
            rank_zero_info(f"federated fit: DP-SGD spent ε = {self.epsilon_spent:.3f} in "
                           f"{self.global_step} steps (δ = {self.dp.delta})")
            for logger in self.loggers:
                logger.log_metrics({"dp/epsilon": self.epsilon_spent}, step=self.global_step)

    def on_fit_end(self) -> None:
        if not self.federated:        # a client's adapter goes back to the server, not to a file
            super().on_fit_end()


def base_id(adapters) -> int:
    """A number naming the base and the adapted shapes: a client trained on another base
    (or with another rank's targets) carries another one."""
    return zlib.crc32(json.dumps(adapters.fingerprint(), sort_keys=True).encode())


def state_of(module: ClientModule) -> dict[str, torch.Tensor]:
    """The module's adapter tensors, detached copies on the CPU (what goes on the wire)."""
    return {k: v.detach().cpu().clone() for k, v in module.adapters.state_dict().items()}
