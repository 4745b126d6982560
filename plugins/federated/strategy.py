"""The server's strategy: Flower's message-API FedAvg (sampling, the minimum-nodes rule,
timeouts) with lorakit's aggregation maths (aggregation.py) and its input checks, plus
Fed-SB's init round (round 0) and a per-round record of what happened."""
from __future__ import annotations

import logging
import re

import torch
from flwr.app import ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from lorakit.training.gradient_init import apply_gradient_init, gradient_variants

from .aggregation import (
    FairConfig,
    aggregate,
    check_strategy,
    payload_bytes,
    reject_reason,
    sent_keys,
    weighted_mean,
)
from .config import FederatedConfig
from .errors import RunError
from .module import ClientModule, state_of

log = logging.getLogger("lorakit.federated")


def one_line(reason: str) -> str:
    """The message of a Flower error reason (`<class 'X'>:<'message'>`; the simulation
    engine's says `Exception ClientAppException occurred. Message: ...`), its last line."""
    found = re.search(r":<'(.*)'>\s*$", reason, re.S)
    lines = [line.strip() for line in (found.group(1) if found else reason).splitlines()]
    last = next((line for line in reversed(lines) if line), reason)
    return re.sub(r"^Exception \w+ occurred\. Message: ", "", last)


def reasons(rejected: list[dict], failed: list[dict]) -> str:
    """Why a round's replies were left out, one line: `node 3 rejected: ...; node 4 failed: ...`."""
    parts = [f"node {r['node']} rejected: {r['reason']}" for r in rejected]
    parts += [f"node {r['node']} failed: {one_line(r['reason'])}" for r in failed]
    return "; ".join(parts) or "no client replied"


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

    def init_round(self, grid: Grid, cfg: FederatedConfig, timeout: float) -> None:
        """Fed-SB's init round (round 0): every client sends its averaged base-weight
        gradient (`client_app.local_gradient`), the example-weighted mean of the accepted
        ones sets B, A and R by LoRA-SB's rule (B, A: the top singular vectors of
        −init_lr·sign(Ḡ)), and round 1 starts from that state. Rejections as in a training
        round; with no usable gradient the run stops with the reasons."""
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
            raise RunError(f"Fed-SB init: no client sent a usable gradient "
                           f"({reasons(rejected, failed)}); fix those clients or run with "
                           "fedsb-init random")
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
