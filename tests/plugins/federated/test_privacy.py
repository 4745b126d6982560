"""Per-client DP-SGD: per-sample clipping, the noiseless step, and the accountant's ε."""
import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("opacus")
pytest.importorskip("transformers")

from lorakit.plugins.federated.client_app import local_train  # noqa: E402
from lorakit.plugins.federated.config import settings  # noqa: E402
from lorakit.plugins.federated.data import ClientData, synthetic  # noqa: E402
from lorakit.plugins.federated.module import ClientModule  # noqa: E402
from lorakit.plugins.federated.privacy import (  # noqa: E402
    DPConfig,
    epsilon,
    noise_for_epsilon,
    per_sample_gradients,
    privatize,
)
from lorakit.plugins.federated.server_app import initial  # noqa: E402


def test_clipping_bounds_each_samples_contribution():
    # sample 0 has norm 13 over both tensors together (3,4 | 12), sample 1 has norm 0.5
    per_sample = {"a": torch.tensor([[3.0, 4.0], [0.3, 0.4]]), "b": torch.tensor([[12.0], [0.0]])}
    out = privatize(per_sample, max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=1)
    assert torch.allclose(out["a"], torch.tensor([3 / 13 + 0.3, 4 / 13 + 0.4]), atol=1e-5)
    assert torch.allclose(out["b"], torch.tensor([12 / 13]), atol=1e-5)
    # any change to one sample moves the sum by at most 2C, however large the change
    wild = {"a": torch.tensor([[3.0, 4.0], [-1e6, 5e5]]), "b": torch.tensor([[12.0], [7e5]])}
    moved = privatize(wild, max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=1)
    shift = torch.cat([moved[k] - out[k] for k in out]).norm()
    assert shift <= 2.0 + 1e-5


def test_noise_has_std_sigma_c_over_the_expected_batch():
    per_sample = {"w": torch.zeros(1, 20_000)}
    g = torch.Generator().manual_seed(0)
    out = privatize(per_sample, max_grad_norm=0.5, noise_multiplier=2.0, expected_batch_size=4,
                    generator=g)
    assert float(out["w"].std()) == pytest.approx(2.0 * 0.5 / 4, rel=0.03)


def test_per_sample_gradients_match_autograd_one_sample_at_a_time():
    # FFA-LoRA keeps its frozen A as a buffer: the case Opacus's GradSampleModule refuses
    torch.manual_seed(0)
    module = ClientModule("ffa").train()
    ids, y, _ = synthetic(5, seed=3)
    got = per_sample_gradients(module, torch.nn.functional.cross_entropy, ids, y)
    params = dict(module.named_parameters())
    assert set(got) == {n for n, p in params.items() if p.requires_grad}
    for i in range(5):
        module.zero_grad()
        torch.nn.functional.cross_entropy(module(ids[i:i + 1]), y[i:i + 1]).backward()
        for name, g in got.items():
            assert torch.allclose(g[i], params[name].grad, atol=1e-6)


def test_padding_changes_no_per_sample_gradient():
    # id 0 pads (MiniLM's batches); the mask must work inside vmap, where transformers'
    # own 2-D mask handling fails on data-dependent control flow
    torch.manual_seed(0)
    module = ClientModule("fedavg").train()
    ids, y, _ = synthetic(3, seq=8, seed=4)
    padded = torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    padded[1, 6:] = 0                 # and one sample shorter still
    short = per_sample_gradients(module, torch.nn.functional.cross_entropy, ids[1:2, :6], y[1:2])
    got = per_sample_gradients(module, torch.nn.functional.cross_entropy, padded, y)
    plain = per_sample_gradients(module, torch.nn.functional.cross_entropy, ids, y)
    for name in got:
        assert torch.allclose(got[name][0], plain[name][0], atol=1e-6)
        assert torch.allclose(got[name][1], short[name][0], atol=1e-6)


def _one_step(dp: DPConfig | None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    module = ClientModule("fedavg", lr=0.1, dp=dp)
    module.federated = True          # as a client built by from_cfg: no adapter file
    ids, y, _ = synthetic(8, seed=5)
    loader = DataLoader(TensorDataset(ids, y), batch_size=8)
    pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(module, loader)
    return {k: v.detach().clone() for k, v in module.adapters.state_dict().items()}


def test_dp_step_without_noise_or_clipping_is_the_plain_step():
    plain = _one_step(None)
    private = _one_step(DPConfig(enabled=True, noise_multiplier=0.0, max_grad_norm=1e6))
    start = _one_step(DPConfig(enabled=True, noise_multiplier=0.0, max_grad_norm=1e-9))
    assert set(plain) == set(private)
    for key in plain:
        assert torch.allclose(plain[key], private[key], atol=1e-6), key
    # and with a tiny clipping bound the step barely moves: the two runs differ
    assert any(not torch.allclose(plain[k], start[k], atol=1e-4) for k in plain)


def test_epsilon_falls_as_noise_grows():
    eps = [epsilon(sigma, 0.25, 40, 1e-5) for sigma in (0.7, 1.0, 2.0, 4.0)]
    assert eps == sorted(eps, reverse=True) and eps[-1] < 0.6 * eps[0]
    assert epsilon(0.0, 0.25, 40, 1e-5) == math.inf
    assert epsilon(1.0, 0.25, 20, 1e-5) < epsilon(1.0, 0.25, 40, 1e-5)   # more steps, more ε
    sigma = noise_for_epsilon(3.0, 0.25, 40, 1e-5)
    assert epsilon(sigma, 0.25, 40, 1e-5) == pytest.approx(3.0, abs=0.05)


def test_a_private_client_reports_the_epsilon_it_spent():
    cfg = settings({"strategy": "fedsb", "local-steps": 2, "rounds": 3, "dp.enabled": True,
                    "dp.target_epsilon": 4.0})
    state, _ = initial(cfg)
    sent, metrics = local_train(cfg, state, 0, 2, server_round=2)
    q = int(cfg["batch-size"]) / metrics["num-examples"]
    assert metrics["epsilon"] == pytest.approx(
        epsilon(metrics["noise-multiplier"], q, 4 + 2 * 2, cfg["dp.delta"]))
    assert metrics["epsilon"] < 4.0      # Fed-SB's 4 init steps and two of three rounds spent
    assert all(torch.isfinite(t).all() for t in sent.values())


def test_fit_solves_sigma_for_the_target_epsilon_over_its_own_run(tmp_path):
    # `lorakit federated fit`: no server, no rounds; the run is the trainer's max_steps
    from opacus.data_loader import DPDataLoader
    torch.manual_seed(0)
    module = ClientModule("fedavg", dp=DPConfig(enabled=True, target_epsilon=2.0))
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=ClientData(partition=0, partitions=2, batch_size=16))
    assert isinstance(trainer.train_dataloader, DPDataLoader)     # Poisson, as accounted
    q = 16 / 64                     # the client holds one domain of four: 64 examples
    assert module.sample_rate == pytest.approx(q)
    assert module.noise_multiplier == pytest.approx(noise_for_epsilon(2.0, q, 4, 1e-5))
    assert module.epsilon_spent == pytest.approx(2.0, abs=0.05)   # all of it, in 4 steps
    assert (tmp_path / "adapter.safetensors").exists()


def test_fit_refuses_a_target_epsilon_without_a_run_length(tmp_path):
    from lorakit.errors import LoraKitError
    module = ClientModule("fedavg", dp=DPConfig(enabled=True, target_epsilon=2.0))
    trainer = pl.Trainer(max_steps=-1, max_epochs=-1, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(LoraKitError, match="dp.target_epsilon needs a run of known length"):
        trainer.fit(module, datamodule=ClientData(partition=0, partitions=2, batch_size=16))
