"""Flower apps for federated LoRA: a `LoRAStrategy` (Flower's message-API FedAvg with
lorakit's aggregation maths and input checks) and a ClientApp that trains a lorakit
adapter locally with Lightning and replies with only the tensors its strategy sends.

A run's settings travel in Flower's run config (`flwr run --run-config` or
`Context.run_config` in simulation): strategy, rank, lr, local-steps, batch-size, seed,
clients, dirichlet (α), base ("tiny": a tiny random BERT on a synthetic four-domain task;
"minilm": all-MiniLM-L6-v2 on the four-domain sentiment data, `train-per-domain` /
`test-per-domain` sentences per domain), min-clients (the fewest replies a round goes on
with; 0: all clients), round-timeout, history-file (where the ServerApp writes the run's
per-round record as JSON), eval-split (test or val), Fed-SB's init (`fedsb-init`,
`init-batches`), LoRA-FAIR's server correction `fair-solver`, `fair-similarity`,
`fair-steps`, `fair-lr`, `fair-lambda` (aggregation.FairConfig), and the per-client DP-SGD
settings `dp.*` (privacy.py).
"""
from __future__ import annotations

import json
import logging
import math
import zlib
from pathlib import Path

import lightning.pytorch as pl
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from lightning.pytorch.utilities import rank_zero_info

from lorakit import LoRAConfig
from lorakit.atomic import atomic_write
from lorakit.errors import LoraKitError
from lorakit.gradient_init import apply_gradient_init, base_gradients, gradient_variants
from lorakit.lightning_module import AdapterModule

from .aggregation import (
    METHOD,
    FairConfig,
    aggregate,
    check_strategy,
    payload_bytes,
    reject_reason,
    sent_keys,
    weighted_mean,
)
from .data import DOMAINS, client_loader, held_out
from .privacy import (
    DPConfig,
    epsilon,
    per_sample_gradients,
    poisson_loader,
    privatize,
    solve_noise,
)

log = logging.getLogger("lorakit.federated")

DEFAULTS = {"strategy": "fedavg", "rank": 4, "alpha": 8.0, "lr": 1e-2, "local-steps": 20,
            "batch-size": 16, "seed": 0, "clients": 2, "dirichlet": 0.0, "base": "tiny",
            "rounds": 2, "head": 1, "min-clients": 0, "round-timeout": 600.0,
            "history-file": "", "dp.enabled": False, "dp.noise_multiplier": 1.0,
            "dp.max_grad_norm": 1.0, "dp.delta": 1e-5, "dp.target_epsilon": 0.0,
            "train-per-domain": 256, "test-per-domain": 128, "fair-solver": "sgd",
            "fair-similarity": "cosine", "fair-steps": 1000, "fair-lr": 0.01,
            "fair-lambda": 0.01, "fedsb-init": "gradient", "init-batches": 4,
            "eval-split": "test"}

HELP = {   # what each run-config key means (`lorakit federated run --help`)
    "strategy": "aggregation strategy: fedavg, ffa, fair or fedsb",
    "rank": "adapter rank r", "alpha": "adapter alpha (scale alpha / r)",
    "lr": "clients' learning rate (AdamW)",
    "local-steps": "training steps each client takes per round",
    "batch-size": "client batch size (the expected batch under DP's Poisson sampling)",
    "seed": "seed of the base head, the shared adapter init, the data split and the noise",
    "clients": "number of clients (virtual clients, or SuperNodes under deployment)",
    "dirichlet": "0: one domain per client; > 0: a Dirichlet(alpha) split over domain x label",
    "base": "tiny (random BERT, synthetic four-domain tokens) or minilm (all-MiniLM-L6-v2, "
            "four sentiment domains)",
    "rounds": "federated rounds",
    "head": "1: train and average the classification head too (modules_to_save); 0: frozen",
    "min-clients": "fewest connected clients a round goes on with (0: all of them); a "
                   "client that dies mid-round is left out of that round",
    "round-timeout": "seconds the server waits for a round's replies",
    "history-file": "where the ServerApp writes its per-round record (JSON)",
    "dp.enabled": "train each client with DP-SGD (per-sample clipping and Gaussian noise)",
    "dp.noise_multiplier": "sigma: noise std over the clipping bound (unless target_epsilon)",
    "dp.max_grad_norm": "C: each sample's gradient is clipped to this L2 norm",
    "dp.delta": "delta of the reported (epsilon, delta)",
    "dp.target_epsilon": "> 0: solve sigma so the whole run spends this epsilon",
    "train-per-domain": "training sentences per domain (minilm)",
    "test-per-domain": "held-out test sentences per domain (minilm)",
    "fair-solver": "LoRA-FAIR's correction: sgd (the paper's) or closed_form (ridge)",
    "fair-similarity": "LoRA-FAIR's similarity: cosine (whole matrices) or column_cosine",
    "fair-steps": "LoRA-FAIR: SGD steps per round", "fair-lr": "LoRA-FAIR: SGD step size",
    "fair-lambda": "LoRA-FAIR: lambda, the weight of ||dB||^2",
    "fedsb-init": "Fed-SB's frozen B and A: gradient (LoRA-SB's init from the clients' "
                  "averaged gradient, gathered in one init round before round 1) or random "
                  "(random orthonormal B and A, R = 0)",
    "init-batches": "batches each client averages its gradient over for Fed-SB's init "
                    "(under DP: DP-SGD steps, counted in epsilon)",
    "eval-split": "where the global adapter is scored each round: test, or val (the "
                  "validation split, for choosing settings)",
}


def settings(run_config) -> dict:
    return {**DEFAULTS, **dict(run_config or {})}


BASES = ("tiny", "minilm")


def make_base(cfg: dict) -> torch.nn.Module:
    if cfg["base"] not in BASES:
        raise ValueError(f"federated: unknown base {cfg['base']!r}; choose one of {BASES}")
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(int(cfg["seed"]))         # every client and the server: one base, one head
    if cfg["base"] == "minilm":
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
    end the ε spent is logged (`dp/epsilon`) and kept in `epsilon_spent`."""

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
        self.model = make_base({"base": base, "seed": seed})
        for p in self.model.parameters():
            p.requires_grad_(False)
        torch.manual_seed(seed + 1)     # one shared adapter init (FFA's A, SB's A and B)
        self.attach_adapters(self.model, LoRAConfig(
            rank=rank, alpha=alpha, targets=["*.query", "*.value"],
            method=METHOD[check_strategy(strategy)],
            modules_to_save=["classifier"] if head else []))

    @classmethod
    def from_cfg(cls, cfg: dict) -> ClientModule:
        module = cls(cfg["strategy"], int(cfg["rank"]), float(cfg["alpha"]), float(cfg["lr"]),
                     int(cfg["seed"]), cfg["base"], bool(int(cfg["head"])),
                     DPConfig.from_settings(cfg))
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
                raise LoraKitError("federated fit: dp.target_epsilon needs a run of known "
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
    return {k: v.detach().cpu().clone() for k, v in module.adapters.state_dict().items()}


def dp_plan(cfg: dict, n: int) -> tuple[float, float]:
    """(q, σ) of a client holding `n` examples: Poisson rate q = batch / n, and σ from
    `dp.noise_multiplier` or solved for `dp.target_epsilon` over the whole run (Fed-SB's
    init steps and every round's local steps)."""
    q = min(1.0, int(cfg["batch-size"]) / n)
    steps = init_steps(cfg) + int(cfg["local-steps"]) * int(cfg["rounds"])
    return q, solve_noise(DPConfig.from_settings(cfg), q, steps)


def make_private(module: ClientModule, loader, n: int, cfg: dict, partition: int,
                 server_round: int):
    """Switch a client to DP-SGD for this round: Poisson sampling at q = batch / n (Opacus's
    DPDataLoader, what the accountant assumes), σ from `dp.noise_multiplier` or solved for
    `dp.target_epsilon` over the whole run, and ε spent after this round for δ, counting
    every round so far and Fed-SB's init steps (round 0; an upper bound when a client sat
    out a round).
    The noise and sampling generators are seeded from (seed, partition, round): independent
    draws per client and round, reproducible runs; keep the seed secret when the noise must
    also hide the data from someone who knows the run's settings."""
    q, sigma = dp_plan(cfg, n)
    steps_so_far = init_steps(cfg) + int(cfg["local-steps"]) * server_round
    seed = (int(cfg["seed"]) * 1_000_003 + partition) * 10_007 + server_round
    module.noise_multiplier, module.expected_batch = sigma, q * n
    module.noise_generator = torch.Generator().manual_seed(seed)
    loader = poisson_loader(loader, seed + 1)
    return loader, {"epsilon": epsilon(sigma, q, steps_so_far, module.dp.delta),
                    "noise-multiplier": sigma}


def client_setup(cfg: dict, global_state: dict[str, torch.Tensor], partition: int,
                 partitions: int) -> tuple[ClientModule, object, int]:
    """A client's module holding the global adapter, and its data: (module, loader, n)."""
    torch.set_num_threads(1)
    module = ClientModule.from_cfg(cfg)
    if global_state:
        module.adapters.load_state_dict(global_state, source="global adapter")
    loader, n = client_loader(cfg, partition, partitions)
    return module, loader, n


def local_train(cfg: dict, global_state: dict[str, torch.Tensor], partition: int,
                partitions: int, server_round: int = 1) -> tuple[dict[str, torch.Tensor], dict]:
    """One client's round: load the global adapter, train `local-steps` steps (DP-SGD when
    `dp.enabled`), return the tensors its strategy sends and its metrics."""
    module, loader, n = client_setup(cfg, global_state, partition, partitions)
    privacy = {}
    if module.dp.enabled:
        loader, privacy = make_private(module, loader, n, cfg, partition, server_round)
    trainer = pl.Trainer(max_steps=int(cfg["local-steps"]), accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, loader)
    state = state_of(module)
    sent = {k: state[k] for k in sent_keys(cfg["strategy"], state)}
    return sent, {"num-examples": n, "base-id": base_id(module.adapters),
                  "bytes": payload_bytes(sent), **privacy}


FEDSB_INITS = ("gradient", "random")


def gradient_init_on(cfg: dict) -> bool:
    """Whether this run starts with Fed-SB's init round."""
    if cfg["fedsb-init"] not in FEDSB_INITS:
        raise ValueError(f"federated: unknown fedsb-init {cfg['fedsb-init']!r}; choose one "
                         f"of {FEDSB_INITS}")
    return cfg["strategy"] == "fedsb" and cfg["fedsb-init"] == "gradient"


def init_steps(cfg: dict) -> int:
    """The DP-SGD steps a client spends in the init round (0 without one)."""
    return int(cfg["init-batches"]) if gradient_init_on(cfg) else 0


def batches_of(loader, k: int):
    """The first `k` batches of `loader`, going round it again as often as needed."""
    while k > 0:
        for batch in loader:
            if k == 0:
                return
            yield batch
            k -= 1


def local_gradient(cfg: dict, global_state: dict[str, torch.Tensor], partition: int,
                   partitions: int) -> tuple[dict[str, torch.Tensor], dict]:
    """One client's part of Fed-SB's init round: for each adapted module, the gradient of
    its base weight (adapters off) averaged over `init-batches` batches, and its metrics.
    Under DP the init batches are DP-SGD steps at the run's σ and q (counted in ε): each
    sample's gradient clipped to C (one norm over all modules), summed, N(0, σ²C²) noise
    per batch added, divided by the expected batch size."""
    module, loader, n = client_setup(cfg, global_state, partition, partitions)
    if n == 0:
        raise LoraKitError(f"federated: client {partition} holds no training examples")
    k = int(cfg["init-batches"])

    def loss(model, batch):
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    privacy = {}
    if not module.dp.enabled:
        sums, count = base_gradients(module, module.adapters, batches_of(loader, k), loss)
        grads = {path: total / count for path, total in sums.items()}
    else:
        loader, privacy = make_private(module, loader, n, cfg, partition, 0)
        c = module.dp.max_grad_norm
        samples = ((ids[i:i + 1], y[i:i + 1]) for ids, y in batches_of(loader, k)
                   for i in range(len(ids)))
        sums, _ = base_gradients(module, module.adapters, samples, loss, clip=c)
        std = module.noise_multiplier * c * math.sqrt(k)     # k batches' noise, summed
        grads = {path: (total + std * torch.randn(total.shape, generator=module.noise_generator))
                 / (k * module.expected_batch) for path, total in sums.items()}
    return grads, {"num-examples": n, "base-id": base_id(module.adapters),
                   "bytes": payload_bytes(grads), **privacy}


class LoRAStrategy(FedAvg):
    """FedAvg's round logic (sampling, min-nodes rule, timeouts) with lorakit's aggregation:
    each reply is checked against the global adapter (keys, shapes, base) and a bad one is
    logged and left out of the round instead of failing it."""

    def __init__(self, strategy: str, global_state: dict[str, torch.Tensor], base: int,
                 fair: FairConfig | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.name = check_strategy(strategy)
        self.fair = fair or FairConfig()
        self.global_state = dict(global_state)
        self.base = base
        self.expected = {k: tuple(global_state[k].shape)
                         for k in sent_keys(strategy, global_state)}
        self.history: list[dict] = []
        self.init: dict = {}      # round 0's record of Fed-SB's init round

    def screen(self, server_round: int, replies, expected: dict[str, tuple[int, ...]]):
        """(tensors, weights, rejected, failed, ε spent) of a round's replies: each checked
        against `expected` (keys and shapes) and this run's base; a bad one is logged and
        left out."""
        valid, failed = self._check_and_log_replies(replies, is_train=True, validate=False)
        updates, weights, rejected, spent = [], [], [], []
        for msg in valid:
            content = msg.content
            arrays = next(iter(content.array_records.values()), None)
            metrics = next(iter(content.metric_records.values()), None)
            update = arrays.to_torch_state_dict() if arrays is not None else {}
            reason = reject_reason(update, expected, self.base,
                                   None if metrics is None else metrics.get("base-id"))
            if reason is None and (metrics is None or self.weighted_by_key not in metrics):
                reason = f"no {self.weighted_by_key!r} metric"
            if reason:
                node = msg.metadata.src_node_id
                log.warning("round %d: rejected node %s: %s", server_round, node, reason)
                rejected.append({"node": node, "reason": reason})
                continue
            updates.append(update)
            weights.append(float(metrics[self.weighted_by_key]))
            if "epsilon" in metrics:
                spent.append(float(metrics["epsilon"]))
        failed = [{"node": m.metadata.src_node_id, "reason": str(m.error.reason)} for m in failed]
        return updates, weights, rejected, failed, spent

    def init_round(self, grid: Grid, cfg: dict, timeout: float) -> None:
        """Fed-SB's init round (round 0): every client sends its averaged base-weight
        gradient (`local_gradient`), the example-weighted mean of the accepted ones sets B,
        A and R by LoRA-SB's rule (B, A: the top singular vectors of −init_lr·sign(Ḡ)), and
        round 1 starts from that state. Rejections as in a training round; with no usable
        gradient the run stops with the reasons."""
        size = max(int(len(list(grid.get_node_ids())) * self.fraction_train),
                   self.min_train_nodes)           # the nodes a training round would ask
        nodes, _ = sample_nodes(grid, self.min_available_nodes, size)
        record = RecordDict({"arrays": ArrayRecord(self.global_state),
                             "config": ConfigRecord({"server-round": 0})})
        replies = grid.send_and_receive(
            self._construct_messages(record, nodes, MessageType.QUERY), timeout=timeout)
        module = ClientModule.from_cfg(cfg)
        module.adapters.load_state_dict(self.global_state, source="global adapter")
        layers = module.adapters.layers
        expected = {path: tuple(layers[path].kind.to_matrix(layers[path].base.weight).shape)
                    for path in gradient_variants(module.adapters)}
        grads, weights, rejected, failed, spent = self.screen(0, replies, expected)
        if not grads:
            raise LoraKitError("Fed-SB init: no client sent a usable gradient "
                               f"(rejected: {rejected}, failed: {failed})")
        p = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        apply_gradient_init(module.adapters, {k: weighted_mean([g[k] for g in grads], p).float()
                                              for k in expected})
        self.global_state = state_of(module)
        self.init = {"init_clients": len(grads), "init_rejected": rejected,
                     "init_failed": failed,
                     "init_bytes_per_client": sum(map(payload_bytes, grads)) / len(grads)}
        if spent:
            self.init["epsilon"] = max(spent)

    def aggregate_train(self, server_round: int, replies):
        updates, weights, rejected, failed, spent = self.screen(server_round, replies,
                                                                self.expected)
        row = {"round": server_round, "clients": len(updates), "rejected": rejected,
               "failed": failed}
        if spent:       # the worst client's ε so far (each client has its own budget)
            row["epsilon"] = max(spent)
        if not updates:
            self.history.append(row)
            return None, None
        agg = aggregate(self.name, self.global_state, updates, weights, self.fair)
        self.global_state = agg.state
        row.update(error=agg.error, error_before=agg.error_before,
                   bytes_per_client=agg.metrics["bytes_per_client"])
        row.update({k: agg.metrics[k] for k in ("similarity_before", "similarity_after",
                                                "delta_ratio") if k in agg.metrics})
        self.history.append(row)
        return (ArrayRecord(agg.state),
                MetricRecord({"aggregation-error": agg.error, "clients": len(updates)}))


def initial(cfg: dict) -> tuple[dict[str, torch.Tensor], int]:
    module = ClientModule.from_cfg(cfg)
    return state_of(module), base_id(module.adapters)


@torch.no_grad()
def accuracy(cfg: dict, state: dict[str, torch.Tensor]) -> dict[str, float]:
    """The global adapter's accuracy on the held-out set, overall and per domain."""
    module = ClientModule.from_cfg(cfg)
    module.adapters.load_state_dict(state, source="global adapter")
    ids, labels, domains = held_out(cfg)
    hit = module(ids).argmax(-1) == labels
    out = {"accuracy": float(hit.float().mean())}
    for d in range(DOMAINS):
        out[f"accuracy-domain{d}"] = float(hit[domains == d].float().mean())
    return out


def make_apps(overrides: dict | None = None, sink: list | None = None):
    """A (ServerApp, ClientApp) pair; `overrides` beat the run config (simulation has none),
    and the server appends each round's record (clients, rejected, error, bytes) to `sink`."""
    client_app = ClientApp()
    server_app = ServerApp()

    def answer(msg: Message, context: Context, work) -> Message:
        cfg = settings({**dict(context.run_config), **(overrides or {})})
        state = msg.content["arrays"].to_torch_state_dict()
        part = int(context.node_config.get("partition-id", 0))
        parts = int(context.node_config.get("num-partitions", cfg["clients"]))
        sent, metrics = work(cfg, state, part, parts, msg.content["config"])
        return Message(RecordDict({"arrays": ArrayRecord(sent),
                                   "metrics": MetricRecord(metrics)}), reply_to=msg)

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        return answer(msg, context, lambda cfg, state, part, parts, config: local_train(
            cfg, state, part, parts, int(config.get("server-round", 1))))

    @client_app.query()
    def gradient(msg: Message, context: Context) -> Message:       # Fed-SB's init round
        return answer(msg, context, lambda cfg, state, part, parts, config: local_gradient(
            cfg, state, part, parts))

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = settings({**dict(context.run_config), **(overrides or {})})
        state, base = initial(cfg)
        # every connected node trains each round; a round needs `min-clients` of them
        # (Flower's minimum-nodes rule): a node that dies mid-round comes back as an error
        # reply (or none by `round-timeout`), is left out of that round, and later rounds
        # go on with those still connected
        least = int(cfg["min-clients"]) or int(cfg["clients"])
        strategy = LoRAStrategy(cfg["strategy"], state, base, FairConfig.from_settings(cfg),
                                fraction_evaluate=0.0, fraction_train=1.0,
                                min_train_nodes=least, min_available_nodes=least)
        if gradient_init_on(cfg):
            strategy.init_round(grid, cfg, float(cfg["round-timeout"]))
            state = strategy.global_state
        evaluations: dict[int, dict] = {}

        def record(done: bool) -> list[dict]:
            rows = [{"round": 0, **strategy.init, **evaluations.get(0, {})}]
            rows += [{**row, **evaluations.get(row["round"], {})} for row in strategy.history]
            if cfg["history-file"]:    # whole or not at all: the runner polls it
                text = json.dumps({"done": done, "history": rows})
                atomic_write(cfg["history-file"], lambda tmp: Path(tmp).write_text(text))
            return rows

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            evaluations[server_round] = accuracy(cfg, arrays.to_torch_state_dict())
            record(done=False)
            return MetricRecord(evaluations[server_round])
        strategy.start(grid=grid, initial_arrays=ArrayRecord(state),
                       num_rounds=int(cfg["rounds"]), evaluate_fn=evaluate,
                       timeout=float(cfg["round-timeout"]))
        history = record(done=True)
        log.info("federated %s: %s", cfg["strategy"], json.dumps(history))
        if sink is not None:
            sink.extend(history)

    return server_app, client_app


server_app, client_app = make_apps()   # what `flwr run` loads


def simulate(overrides: dict) -> list[dict]:
    """Run on Flower's simulation engine (Ray backend), one CPU per virtual client."""
    from flwr.simulation import run_simulation
    cfg = settings(overrides)
    history: list[dict] = []
    server, client = make_apps(cfg, history)
    run_simulation(server_app=server, client_app=client, num_supernodes=int(cfg["clients"]),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    return history
