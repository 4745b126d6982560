"""The Flower strategy and client without an engine: one client round through Lightning,
a bad reply rejected with a logged reason while the good ones are aggregated."""
import logging
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("flwr")
from flwr.app import ArrayRecord, MetricRecord, RecordDict  # noqa: E402

from lorakit.plugins.federated.aggregation import FairConfig, sent_keys  # noqa: E402
from lorakit.plugins.federated.app import LoRAStrategy, initial, local_train, settings  # noqa: E402
from lorakit.plugins.federated.data import dirichlet_split  # noqa: E402


class _Reply:
    """What the strategy reads of a Flower reply (a real Message needs a live run id)."""

    def __init__(self, arrays, metrics, node, error=None):
        self.content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)})
        self.metadata = SimpleNamespace(src_node_id=node)
        self.error = SimpleNamespace(reason=error)

    def has_error(self):
        return self.error.reason is not None


def _reply(arrays, metrics, node):
    return _Reply(arrays, metrics, node)


@pytest.mark.parametrize("strategy", ["ffa", "fedsb"])
def test_round_with_a_bad_client(strategy, caplog):
    cfg = settings({"strategy": strategy, "local-steps": 2, "clients": 2})
    state, base = initial(cfg)
    good = [local_train(cfg, state, c, 2) for c in range(2)]
    for sent, m in good:
        factor = ".lora_B" if strategy == "ffa" else ".lora_R"
        assert {k for k in sent if ".lora_" in k} == {k for k in state if k.endswith(factor)}
        assert {k for k in sent if ".lora_" not in k} == {"classifier.weight", "classifier.bias"}
        assert m["base-id"] == base
    wrong_shape = {k: torch.zeros(*v.shape[:-1], v.shape[-1] + 1) for k, v in good[0][0].items()}
    strat = LoRAStrategy(strategy, state, base, min_train_nodes=2, min_available_nodes=2)
    replies = [_reply(s, m, i + 1) for i, (s, m) in enumerate(good)]
    replies.append(_reply(wrong_shape, good[0][1], 7))
    replies.append(_reply(good[0][0], {**good[0][1], "base-id": base + 1}, 8))
    # a client that died mid-round: Flower hands the strategy an error reply, left out
    replies.append(_Reply(good[0][0], good[0][1], 9, error="node 9 disconnected"))
    with caplog.at_level(logging.WARNING, logger="lorakit.federated"):
        arrays, metrics = strat.aggregate_train(1, replies)
    row = strat.history[-1]
    assert row["clients"] == 2 and len(row["rejected"]) == 2
    assert "shape" in row["rejected"][0]["reason"] and "base" in row["rejected"][1]["reason"]
    assert row["failed"] == [{"node": 9, "reason": "node 9 disconnected"}]
    assert "rejected node" in caplog.text
    assert row["error"] < 1e-6                       # FFA-LoRA and Fed-SB aggregate exactly
    assert set(arrays.to_torch_state_dict()) == set(state)
    moved = [k for k in good[0][0] if not torch.equal(state[k], strat.global_state[k])]
    assert moved


def test_dirichlet_split_covers_everything():
    labels = [0, 1] * 40
    domains = [i % 4 for i in range(80)]
    parts = dirichlet_split(labels, domains, 3, alpha=0.5, seed=1)
    assert sorted(sum(parts, [])) == list(range(80))
    one = dirichlet_split(labels, domains, 4, alpha=0.0)
    assert all(len({domains[i] for i in p}) == 1 for p in one)


def test_a_fair_round_records_its_correction():
    cfg = settings({"strategy": "fair", "fair-steps": 100})
    state, base = initial(cfg)
    g = torch.Generator().manual_seed(0)
    updates = [{k: state[k] + 0.1 * torch.randn(state[k].shape, generator=g)
                for k in sent_keys("fair", state)} for _ in range(3)]
    strat = LoRAStrategy("fair", state, base, FairConfig.from_settings(cfg),
                         min_train_nodes=3, min_available_nodes=3)
    strat.aggregate_train(1, [_reply(u, {"num-examples": 10 + i, "base-id": base}, i + 1)
                              for i, u in enumerate(updates)])
    row = strat.history[-1]
    assert row["clients"] == 3 and not row["rejected"]
    assert row["similarity_after"] > row["similarity_before"]
    assert row["error"] < row["error_before"] and 0 < row["delta_ratio"] < 1
