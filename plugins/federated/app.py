"""Flower apps for federated LoRA: a `LoRAStrategy` (Flower's message-API FedAvg with
lorakit's aggregation maths and input checks) and a ClientApp that trains a lorakit
adapter locally with Lightning and replies with only the tensors its strategy sends.

A run's settings travel in Flower's run config (`flwr run --run-config` or
`Context.run_config` in simulation): strategy, rank, lr, local-steps, batch-size, seed,
clients, alpha (Dirichlet), base ("tiny": a tiny random BERT, the only base wired so far).
"""
from __future__ import annotations

import json
import logging
import zlib

import lightning.pytorch as pl
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from lorakit import LoRAConfig
from lorakit.lightning_module import AdapterModule

from .aggregation import METHOD, aggregate, check_strategy, payload_bytes, reject_reason, sent_keys
from .data import DOMAINS, client_loader, held_out

log = logging.getLogger("lorakit.federated")

DEFAULTS = {"strategy": "fedavg", "rank": 4, "alpha": 8.0, "lr": 1e-2, "local-steps": 20,
            "batch-size": 16, "seed": 0, "clients": 2, "dirichlet": 0.0, "base": "tiny",
            "rounds": 2, "head": 1}


def settings(run_config) -> dict:
    return {**DEFAULTS, **dict(run_config or {})}


def make_base(cfg: dict) -> torch.nn.Module:
    if cfg["base"] != "tiny":
        raise ValueError(f"federated: base {cfg['base']!r} is not wired yet (only 'tiny')")
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(int(cfg["seed"]))         # every client and the server: one base, one head
    bert = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=32, num_labels=2,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(bert).eval()


class ClientModule(AdapterModule):
    """A sequence classifier whose only trained tensors are the adapter's (and the head's).
    Built by `from_cfg` (a federated client) it writes no files: its tensors go to the
    server; under `lorakit federated fit` it saves its adapter like any module."""

    federated = False

    def __init__(self, strategy: str = "fedavg", rank: int = 4, alpha: float = 8.0,
                 lr: float = 1e-2, seed: int = 0, base: str = "tiny", head: bool = True) -> None:
        super().__init__(lr=lr)
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
                     int(cfg["seed"]), cfg["base"], bool(int(cfg["head"])))
        module.federated = True
        return module

    def forward(self, ids):
        return self.model(input_ids=ids).logits

    def training_step(self, batch, batch_idx):
        ids, y = batch
        return torch.nn.functional.cross_entropy(self(ids), y)

    def on_fit_end(self) -> None:
        if not self.federated:        # a client's adapter goes back to the server, not to a file
            super().on_fit_end()


def base_id(adapters) -> int:
    """A number naming the base and the adapted shapes: a client trained on another base
    (or with another rank's targets) carries another one."""
    return zlib.crc32(json.dumps(adapters.fingerprint(), sort_keys=True).encode())


def state_of(module: ClientModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.adapters.state_dict().items()}


def local_train(cfg: dict, global_state: dict[str, torch.Tensor], partition: int,
                partitions: int) -> tuple[dict[str, torch.Tensor], dict]:
    """One client's round: load the global adapter, train `local-steps` steps, return the
    tensors its strategy sends and its metrics."""
    torch.set_num_threads(1)
    module = ClientModule.from_cfg(cfg)
    if global_state:
        module.adapters.load_state_dict(global_state, source="global adapter")
    loader, n = client_loader(cfg, partition, partitions)
    trainer = pl.Trainer(max_steps=int(cfg["local-steps"]), accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, loader)
    state = state_of(module)
    sent = {k: state[k] for k in sent_keys(cfg["strategy"], state)}
    return sent, {"num-examples": n, "base-id": base_id(module.adapters),
                  "bytes": payload_bytes(sent)}


class LoRAStrategy(FedAvg):
    """FedAvg's round logic (sampling, min-nodes rule, timeouts) with lorakit's aggregation:
    each reply is checked against the global adapter (keys, shapes, base) and a bad one is
    logged and left out of the round instead of failing it."""

    def __init__(self, strategy: str, global_state: dict[str, torch.Tensor], base: int,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.name = check_strategy(strategy)
        self.global_state = dict(global_state)
        self.base = base
        self.expected = {k: tuple(global_state[k].shape)
                         for k in sent_keys(strategy, global_state)}
        self.history: list[dict] = []

    def aggregate_train(self, server_round: int, replies):
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        updates, weights, rejected = [], [], []
        for msg in valid:
            content = msg.content
            arrays = next(iter(content.array_records.values()), None)
            metrics = next(iter(content.metric_records.values()), None)
            update = arrays.to_torch_state_dict() if arrays is not None else {}
            reason = reject_reason(update, self.expected, self.base,
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
        row = {"round": server_round, "clients": len(updates), "rejected": rejected}
        if not updates:
            self.history.append(row)
            return None, None
        agg = aggregate(self.name, self.global_state, updates, weights)
        self.global_state = agg.state
        row.update(error=agg.error, error_before=agg.error_before,
                   bytes_per_client=agg.metrics["bytes_per_client"])
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

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = settings({**dict(context.run_config), **(overrides or {})})
        state = msg.content["arrays"].to_torch_state_dict()
        part = int(context.node_config.get("partition-id", 0))
        parts = int(context.node_config.get("num-partitions", cfg["clients"]))
        sent, metrics = local_train(cfg, state, part, parts)
        return Message(RecordDict({"arrays": ArrayRecord(sent),
                                   "metrics": MetricRecord(metrics)}), reply_to=msg)

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = settings({**dict(context.run_config), **(overrides or {})})
        state, base = initial(cfg)
        n = int(cfg["clients"])
        strategy = LoRAStrategy(cfg["strategy"], state, base, fraction_evaluate=0.0,
                                min_train_nodes=n, min_available_nodes=n)
        evaluations: dict[int, dict] = {}

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            evaluations[server_round] = accuracy(cfg, arrays.to_torch_state_dict())
            return MetricRecord(evaluations[server_round])
        strategy.start(grid=grid, initial_arrays=ArrayRecord(state),
                       num_rounds=int(cfg["rounds"]), evaluate_fn=evaluate)
        for row in strategy.history:
            row.update(evaluations.get(row["round"], {}))
        strategy.history.insert(0, {"round": 0, **evaluations.get(0, {})})
        log.info("federated %s: %s", cfg["strategy"], json.dumps(strategy.history))
        if sink is not None:
            sink.extend(strategy.history)

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
