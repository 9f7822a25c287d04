"""Each method must learn in the right direction on a task whose optimum is known.

A contextual bandit over a fixed decoder: the state s is random, the base is a frozen (random-weight) built-in
flow policy, and the reward of an executed chunk is -||a - a*(s)||^2 where a*(s) = decode(s, z*) for a fixed
target latent z* inside every method's reach. Episodes last one chunk (terminated), so the TD target is the
reward and the only way to raise it is to move the chosen latent toward z*. Each method trains online for a few
hundred updates; its deterministic action must end much closer to a*(s) than the base's. Flipping the sign of
an actor objective (the head then minimises Q) turns these tests red — checked once by mutating the code.
"""

import pytest
import torch
from accelerate import Accelerator

from vla_steer.adapters import NativePolicyAdapter
from vla_steer.adapters.base import LatentLayout
from vla_steer.algorithms import algorithm_config, build_algorithm
from vla_steer.config import HeadConfig
from vla_steer.policies import ChunkPolicyConfig, build_chunk_policy

OBS_DIM, ACTION_DIM, HORIZON = 3, 2, 2
BATCH, ITERATIONS = 64, 300


def bandit(seed: int = 0):
    torch.manual_seed(seed)
    policy = build_chunk_policy(ChunkPolicyConfig(type="flow", obs_dim=OBS_DIM, action_dim=ACTION_DIM, horizon=HORIZON,
                                                  n_action_steps=HORIZON, hidden_dim=32, num_layers=2,
                                                  num_inference_steps=2))
    adapter = NativePolicyAdapter(policy)
    layout = LatentLayout("full", adapter.noise_shape)
    target_latent = torch.full((1, layout.latent_dim), 0.8)  # within the bound (1.5) and the trust region below
    return adapter, layout, target_latent


def executed(adapter, layout, context, latent) -> torch.Tensor:
    with torch.no_grad():
        return adapter.decode(context, layout.to_noise(latent)).flatten(1)


def transitions(adapter, layout, target_latent, latent_of, n: int) -> dict[str, torch.Tensor]:
    """``n`` one-chunk episodes: the latent chosen by ``latent_of(features)``, reward -||a - a*(s)||^2."""
    context = adapter.encode(torch.randn(n, OBS_DIM))
    latent = latent_of(context.features)
    action = executed(adapter, layout, context, latent)
    best = executed(adapter, layout, context, target_latent.expand(n, -1))
    return {"features": context.features, "latent": latent, "action": action,
            "reward": -(action - best).pow(2).sum(1), "discount": torch.full((n,), 0.99),
            "terminated": torch.ones(n), "next_features": context.features,
            "decode_state": context.decode_state, "next_decode_state": context.decode_state}


def distance_to_optimum(algo, adapter, layout, target_latent, states: torch.Tensor) -> float:
    context = adapter.encode(states)
    chosen = algo.act(context.features, deterministic=True)
    best = executed(adapter, layout, context, target_latent.expand(len(states), -1))
    return (executed(adapter, layout, context, chosen) - best).pow(2).sum(1).mean().item()


def train_on_bandit(name: str, **fields) -> tuple[float, float, float]:
    """(base's distance, the head's before training, after) to a*(s) on held-out states."""
    adapter, layout, target_latent = bandit()
    head = HeadConfig(hidden_dim=64, num_layers=2, bound=1.5)
    algo = build_algorithm(algorithm_config(name, batch_size=BATCH, **fields), head, adapter, layout, Accelerator(cpu=True))
    held_out = torch.randn(256, OBS_DIM, generator=torch.Generator().manual_seed(123))
    context = adapter.encode(held_out)
    prior = algo.prior_latent(len(held_out))
    best = executed(adapter, layout, context, target_latent.expand(len(held_out), -1))
    base = (executed(adapter, layout, context, prior) - best).pow(2).sum(1).mean().item()
    before = distance_to_optimum(algo, adapter, layout, target_latent, held_out)
    buffer = transitions(adapter, layout, target_latent, lambda f: algo.prior_latent(len(f)), 4 * BATCH)  # warm-up
    for _ in range(ITERATIONS):
        fresh = transitions(adapter, layout, target_latent, lambda f: algo.act(f, deterministic=False), 8)
        buffer = {k: torch.cat([buffer[k], fresh[k]])[-4096:] for k in buffer}
        index = torch.randint(len(buffer["reward"]), (BATCH,))
        algo.update({k: v[index] for k, v in buffer.items()})
    return base, before, distance_to_optimum(algo, adapter, layout, target_latent, held_out)


@pytest.mark.parametrize("name, fields", [
    ("dsrl_sac", {}),
    ("dsrl_na", {}),
    ("lpds", {"critic": "latent", "delta": 4.0}),
    ("lpds", {"critic": "action", "delta": 4.0}),
], ids=["dsrl_sac", "dsrl_na", "lpds-latent-critic", "lpds-action-critic"])
def test_each_method_moves_its_action_toward_the_known_optimum(name, fields):
    base, before, after = train_on_bandit(name, **fields)
    assert after < 0.3 * base and after < 0.3 * before, (base, before, after)
