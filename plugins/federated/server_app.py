"""The Flower ServerApp: builds the global adapter, runs Fed-SB's init round when the run
has one, then `rounds` rounds of `LoRAStrategy` (strategy.py), scoring the global adapter
on the held-out set after each, and keeps the run's per-round record.

The record (clients, rejected and failed replies, aggregation error, bytes, accuracy, ε) is
written whole to `history-file` after every round, `{"done": ..., "history": [...]}`,
which is how a deployment run's result comes back (deployment.py); a run that stops on a
lorakit error writes its one-line message there as `"error"`. `app` is what `flwr run`
loads (`serverapp = "...server_app:app"`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from lorakit.atomic import atomic_write
from lorakit.errors import LoraKitError

from .config import FederatedConfig, settings
from .data import DOMAINS, held_out
from .module import ClientModule, base_id, state_of
from .strategy import LoRAStrategy

log = logging.getLogger("lorakit.federated")


def initial(cfg: FederatedConfig) -> tuple[dict[str, torch.Tensor], int]:
    """The global adapter every run starts from, and the number naming its base."""
    module = ClientModule.from_cfg(cfg)
    return state_of(module), base_id(module.adapters)


@torch.no_grad()
def accuracy(cfg: FederatedConfig, state: dict[str, torch.Tensor]) -> dict[str, float]:
    """The global adapter's accuracy on the held-out set, overall and per domain."""
    module = ClientModule.from_cfg(cfg)
    module.adapters.load_state_dict(state, source="global adapter")
    ids, labels, domains = held_out(cfg)
    hit = module(ids).argmax(-1) == labels
    out = {"accuracy": float(hit.float().mean())}
    for d in range(DOMAINS):
        out[f"accuracy-domain{d}"] = float(hit[domains == d].float().mean())
    return out


def make_server_app(overrides: dict | None = None, sink: dict | None = None) -> ServerApp:
    """The ServerApp; `overrides` beat the run config (simulation has none), and the run's
    record goes into `sink` too (`history`, and `error` when it stopped on one)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = settings({**dict(context.run_config), **(overrides or {})})
        evaluations: dict[int, dict] = {}
        strategy: LoRAStrategy | None = None

        def record(done: bool, error: str | None = None) -> list[dict]:
            rows = [{"round": 0, **(strategy.init if strategy else {}),
                     **evaluations.get(0, {})}]
            rows += [{**row, **evaluations.get(row["round"], {})}
                     for row in (strategy.history if strategy else [])]
            out = {"done": done, "history": rows, **({"error": error} if error else {})}
            if cfg.history_file:    # whole or not at all: the runner polls it
                text = json.dumps(out)
                atomic_write(cfg.history_file, lambda tmp: Path(tmp).write_text(text))
            if sink is not None and done:
                sink.update(out)
            return rows

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            evaluations[server_round] = accuracy(cfg, arrays.to_torch_state_dict())
            record(done=False)
            return MetricRecord(evaluations[server_round])

        try:
            state, base = initial(cfg)
            # every connected node trains each round; a round needs `min-clients` of them
            # (Flower's minimum-nodes rule): a node that dies mid-round comes back as an
            # error reply (or none by `round-timeout`), is left out of that round, and
            # later rounds go on with those still connected
            strategy = LoRAStrategy(cfg.strategy, state, base, cfg.fair,
                                    fraction_evaluate=0.0, fraction_train=1.0,
                                    min_train_nodes=cfg.least_clients,
                                    min_available_nodes=cfg.least_clients)
            if cfg.gradient_init:
                strategy.init_round(grid, cfg, cfg.round_timeout)
                state = strategy.global_state
            strategy.start(grid=grid, initial_arrays=ArrayRecord(state),
                           num_rounds=cfg.rounds, evaluate_fn=evaluate,
                           timeout=cfg.round_timeout)
        except LoraKitError as err:        # the runner reads it from the record, one line
            record(done=True, error=str(err))
            raise
        history = record(done=True)
        log.info("federated %s: %s", cfg.strategy, json.dumps(history))

    return app


app = make_server_app()   # what `flwr run` loads
