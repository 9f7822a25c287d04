import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from vla_steer.adapters import LatentLayout, NativePolicyAdapter
from vla_steer.algorithms import LPDS
from vla_steer.config import HeadConfig, LPDSConfig, recipe_from_dict
from vla_steer.policies import ChunkPolicyConfig, build_chunk_policy
from vla_steer.training import SteeringTrainer


def _lpds(**algo):
    torch.manual_seed(0)
    policy = build_chunk_policy(ChunkPolicyConfig(type="flow", obs_dim=5, action_dim=2, horizon=3, n_action_steps=2,
                                                  hidden_dim=16, num_layers=1, num_inference_steps=3))
    adapter = NativePolicyAdapter(policy)
    cfg = LPDSConfig(batch_size=16, **algo)
    return LPDS(cfg, HeadConfig(hidden_dim=16, num_layers=1, bound=3.0), adapter,
                LatentLayout("full", adapter.noise_shape), Accelerator(cpu=True))


def _batch(n=16):
    s, s2 = torch.randn(n, 5), torch.randn(n, 5)
    return {"features": s, "decode_state": s, "next_features": s2, "next_decode_state": s2, "latent": torch.randn(n, 6),
            "action": torch.randn(n, 4), "reward": torch.randn(n), "discount": torch.full((n,), 0.99), "terminated": torch.zeros(n)}


def test_delta_starts_at_zero_so_the_base_is_recovered():
    algo = _lpds()
    s = torch.randn(8, 5)
    assert torch.equal(algo.delta_net(s), torch.zeros(8, 6))
    eps = torch.randn(8, 6)
    assert torch.equal(algo.steer(s, eps)[0], eps.clamp(-3, 3))


def test_multiplier_rises_while_violated_and_decays_to_zero_when_slack():
    algo = _lpds(delta=1e-3, dual_lr=0.1)
    torch.nn.init.constant_(algo.delta_net.net[-1].bias, 1.0)  # ||Delta||^2 ~ 6 >> delta
    values = [algo.update(_batch())["multiplier"] for _ in range(10)]
    assert all(b > a for a, b in zip(values, values[1:])), values

    algo = _lpds(delta=50.0, dual_lr=0.01, init_multiplier=2.0)  # ||Delta||^2 ~ 0 << delta: slack
    values = [algo.update(_batch())["multiplier"] for _ in range(10)]
    assert values[0] < 2.0 and values[-1] == 0.0, values
    assert all(b <= a for a, b in zip(values, values[1:]))


def test_trained_delta_respects_trust_region(tiny_recipe):
    """A real LP-DS run on LunarLander with a small delta: E||Delta(s)||^2 ends within tolerance of delta."""
    delta = 0.05
    recipe = recipe_from_dict(tiny_recipe(
        algorithm={"name": "lpds", "delta": delta, "dual_lr": 0.2, "actor_lr": 1e-3, "batch_size": 64},
        train={"total_env_steps": 4000, "warmup_env_steps": 400, "eval_every": 100_000, "checkpoint_every": 100_000,
               "log_every": 400}))
    trainer = SteeringTrainer(recipe)
    trainer.run()
    # the multiplier, E||Delta||^2 and the violation are logged every window, not only at evaluations
    windows = [r for r in map(json.loads, (trainer.output_dir / "metrics.jsonl").read_text().splitlines())
               if r["event"] == "update"]
    assert len(windows) == 10 and all(r["window_updates"] > 0 for r in windows)  # one per 400 env steps from warm-up's end
    for r in windows:
        assert r["train/violation"] == pytest.approx(r["train/delta_sq"] - delta, abs=1e-6)
        assert r["train/multiplier"] >= 0
    assert any(r["train/multiplier"] > 0 for r in windows)
    features = trainer.buffer.state_dict()["tensors"]["features"]
    with torch.no_grad():
        delta_sq = trainer.algo.delta_net(features).pow(2).sum(-1).mean().item()
    assert trainer.algo.multiplier.item() > 0, "the constraint should be active in this run"
    assert abs(delta_sq - delta) < 0.5 * delta, f"E||Delta||^2 = {delta_sq:.4f}, delta = {delta}"
    assert np.isfinite(delta_sq)
