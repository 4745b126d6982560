"""The Flower strategy and client without an engine: one client round through Lightning,
a bad reply rejected with a logged reason while the good ones are aggregated."""
import logging
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("flwr")
from flwr.app import ArrayRecord, MetricRecord, RecordDict  # noqa: E402

from lorakit.errors import LoraKitError  # noqa: E402
from lorakit.plugins.federated.aggregation import FairConfig, sent_keys  # noqa: E402
from lorakit.plugins.federated.client_app import local_train  # noqa: E402
from lorakit.plugins.federated.config import settings  # noqa: E402
from lorakit.plugins.federated.data import dirichlet_split  # noqa: E402
from lorakit.plugins.federated.server_app import initial  # noqa: E402
from lorakit.plugins.federated.strategy import LoRAStrategy  # noqa: E402


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


class _Grid:
    """Flower's Grid as `init_round` uses it: node ids, and replies to its query messages
    (nodes 1 and 2 answer with `local_gradient`; `bad` maps other nodes to a reply)."""

    def __init__(self, cfg, state, bad=None):
        self.cfg, self.state, self.bad = cfg, state, bad or {}

    def get_node_ids(self):
        return [1, 2, *self.bad]

    def send_and_receive(self, messages, timeout=None):
        from lorakit.plugins.federated.client_app import local_gradient
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            assert msg.metadata.message_type == "query"
            if node in self.bad:
                replies.append(_reply(*self.bad[node], node))
            else:
                replies.append(_reply(*local_gradient(self.cfg, self.state, node - 1, 2), node))
        return replies


def _offline(strategy):
    """`strategy` building its query messages without a live run (a real Message needs one)."""
    strategy._construct_messages = lambda record, nodes, kind: [
        SimpleNamespace(content=record, metadata=SimpleNamespace(dst_node_id=n, message_type=kind))
        for n in nodes]
    return strategy


def test_fedsb_init_round_sets_b_a_r_from_the_mean_of_the_good_clients_gradients(caplog):
    from lorakit.plugins.federated.client_app import local_gradient
    from lorakit.plugins.federated.module import ClientModule
    from lorakit.training.gradient_init import apply_gradient_init
    cfg = settings({"strategy": "fedsb", "clients": 2})
    state, base = initial(cfg)
    good = [local_gradient(cfg, state, c, 2) for c in range(2)]
    grads, metrics = good[0]
    assert {g.shape for g in grads.values()} == {torch.Size([32, 32])} and len(grads) == 4
    wrong = {k: v[:, :-1] for k, v in grads.items()}
    strat = _offline(LoRAStrategy("fedsb", state, base, min_train_nodes=2, min_available_nodes=2))
    with caplog.at_level(logging.WARNING, logger="lorakit.federated"):
        strat.init_round(_Grid(cfg, state, {3: (wrong, metrics)}), cfg, timeout=10)
    assert strat.init["init_clients"] == 2 and "shape" in strat.init["init_rejected"][0]["reason"]
    assert strat.init["init_bytes_per_client"] == 4 * 32 * 32 * 4
    n = torch.tensor([m["num-examples"] for _, m in good], dtype=torch.float64)
    want = ClientModule.from_cfg(cfg)
    apply_gradient_init(want.adapters, {k: sum(p * g[k].double() for p, (g, _) in
                                               zip((n / n.sum()).tolist(), good)).float()
                                        for k in grads})
    for k, v in want.adapters.state_dict().items():
        assert torch.allclose(strat.global_state[k], v, atol=1e-6), k
    assert all(strat.global_state[k].abs().sum() > 0 for k in state if k.endswith(".lora_R"))
    only_bad = _Grid(cfg, state, {3: (wrong, metrics)})
    only_bad.get_node_ids = lambda: [3]
    lone = _offline(LoRAStrategy("fedsb", state, base, min_train_nodes=1, min_available_nodes=1))
    with pytest.raises(LoraKitError, match="no client sent a usable gradient"):
        lone.init_round(only_bad, cfg, timeout=10)


def test_under_dp_the_init_batches_are_dp_sgd_steps_counted_in_epsilon():
    from lorakit.plugins.federated.client_app import local_gradient
    from lorakit.plugins.federated.privacy import epsilon
    cfg = settings({"strategy": "fedsb", "clients": 2, "dp.enabled": True,
                    "dp.target_epsilon": 8.0, "init-batches": 3})
    state, _ = initial(cfg)
    grads, m = local_gradient(cfg, state, 0, 2)
    assert all(torch.isfinite(g).all() for g in grads.values())
    q = int(cfg["batch-size"]) / m["num-examples"]
    assert m["epsilon"] == pytest.approx(epsilon(m["noise-multiplier"], q, 3, 1e-5))
    steps = 3 + int(cfg["local-steps"]) * int(cfg["rounds"])      # the whole run spends 8
    assert epsilon(m["noise-multiplier"], q, steps, 1e-5) == pytest.approx(8.0, abs=0.05)
    again, _ = local_gradient(cfg, state, 0, 2)                      # seeded noise
    assert all(torch.equal(grads[k], again[k]) for k in grads)


def test_unknown_fedsb_init_and_eval_split_are_refused_naming_the_choices():
    # refused when the settings are read, before any client or engine starts
    with pytest.raises(ValueError, match=r"unknown fedsb-init 'svd'.*'gradient', 'random'"):
        settings({"strategy": "fedsb", "fedsb-init": "svd"})
    with pytest.raises(ValueError, match=r"unknown eval-split 'train'.*'test', 'val'"):
        settings({"eval-split": "train"})


def test_a_client_without_examples_cannot_send_an_init_gradient(monkeypatch):
    from torch.utils.data import DataLoader, TensorDataset

    from lorakit.plugins.federated import client_app
    empty = DataLoader(TensorDataset(torch.zeros(0, 12, dtype=torch.long),
                                     torch.zeros(0, dtype=torch.long)))
    monkeypatch.setattr(client_app, "client_loader", lambda cfg, part, parts: (empty, 0))
    cfg = settings({"strategy": "fedsb"})
    with pytest.raises(LoraKitError, match="client 1 holds no training examples"):
        client_app.local_gradient(cfg, initial(cfg)[0], 1, 2)
