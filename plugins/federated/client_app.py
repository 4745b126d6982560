"""The Flower ClientApp: a client trains the global adapter locally with Lightning
(module.py's `ClientModule`) and replies with only the tensors its strategy sends, or, in
Fed-SB's init round, with its averaged base-weight gradient.

A run's settings travel in Flower's run config (`Context.run_config`, config.py's
`FederatedConfig`); the client's partition comes from its node config (`partition-id`,
`num-partitions`). `app` is what `flwr run` loads (`clientapp = "...client_app:app"`).
"""
from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from lorakit.training.gradient_init import base_gradients

from .aggregation import payload_bytes, sent_keys
from .config import FederatedConfig, settings
from .data import client_loader
from .errors import ClientError
from .module import ClientModule, base_id, state_of
from .privacy import make_private


def client_setup(cfg: FederatedConfig, global_state: dict[str, torch.Tensor], partition: int,
                 partitions: int) -> tuple[ClientModule, object, int]:
    """A client's module holding the global adapter, and its data: (module, loader, n)."""
    torch.set_num_threads(1)
    module = ClientModule.from_cfg(cfg)
    if global_state:
        module.adapters.load_state_dict(global_state, source="global adapter")
    loader, n = client_loader(cfg, partition, partitions)
    return module, loader, n


def local_train(cfg: FederatedConfig, global_state: dict[str, torch.Tensor], partition: int,
                partitions: int, server_round: int = 1) -> tuple[dict[str, torch.Tensor], dict]:
    """One client's round: load the global adapter, train `local-steps` steps (DP-SGD when
    `dp.enabled`), return the tensors its strategy sends and its metrics."""
    module, loader, n = client_setup(cfg, global_state, partition, partitions)
    privacy = {}
    if module.dp.enabled:
        loader, privacy = make_private(module, loader, n, cfg, partition, server_round)
    trainer = pl.Trainer(max_steps=cfg.local_steps, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, loader)
    state = state_of(module)
    sent = {k: state[k] for k in sent_keys(cfg.strategy, state)}
    return sent, {"num-examples": n, "base-id": base_id(module.adapters),
                  "bytes": payload_bytes(sent), **privacy}


def batches_of(loader, k: int):
    """The first `k` batches of `loader`, going round it again as often as needed."""
    while k > 0:
        for batch in loader:
            if k == 0:
                return
            yield batch
            k -= 1


def local_gradient(cfg: FederatedConfig, global_state: dict[str, torch.Tensor], partition: int,
                   partitions: int) -> tuple[dict[str, torch.Tensor], dict]:
    """One client's part of Fed-SB's init round: for each adapted module, the gradient of
    its base weight (adapters off) averaged over `init-batches` batches, and its metrics.
    Under DP the init batches are DP-SGD steps at the run's σ and q (counted in ε): each
    sample's gradient clipped to C (one norm over all modules), summed, N(0, σ²C²) noise
    per batch added, divided by the expected batch size."""
    module, loader, n = client_setup(cfg, global_state, partition, partitions)
    if n == 0:
        raise ClientError(f"federated: client {partition} holds no training examples, so it "
                          "has no gradient for Fed-SB's init; use fewer clients, a larger "
                          "dirichlet alpha, or fedsb-init random")
    k = cfg.init_batches

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


def make_client_app(overrides: dict | None = None) -> ClientApp:
    """The ClientApp; `overrides` beat the run config (simulation has none)."""
    app = ClientApp()

    def answer(msg: Message, context: Context, work) -> Message:
        cfg = settings({**dict(context.run_config), **(overrides or {})})
        state = msg.content["arrays"].to_torch_state_dict()
        part = int(context.node_config.get("partition-id", 0))
        parts = int(context.node_config.get("num-partitions", cfg.clients))
        sent, metrics = work(cfg, state, part, parts, msg.content["config"])
        return Message(RecordDict({"arrays": ArrayRecord(sent),
                                   "metrics": MetricRecord(metrics)}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return answer(msg, context, lambda cfg, state, part, parts, config: local_train(
            cfg, state, part, parts, int(config.get("server-round", 1))))

    @app.query()
    def gradient(msg: Message, context: Context) -> Message:       # Fed-SB's init round
        return answer(msg, context, lambda cfg, state, part, parts, config: local_gradient(
            cfg, state, part, parts))

    return app


app = make_client_app()   # what `flwr run` loads
