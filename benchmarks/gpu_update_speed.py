"""Updates per second on one device: Stable-Baselines3's SAC (the official DSRL design's learner) against vla_steer's
DSRL-SAC, eager and as a CUDA graph, at the push recipe's sizes; LP-DS and DSRL-NA beside them.

    python benchmarks/gpu_update_speed.py --device cuda               # on a GPU: the claim is the graph / SB3 ratio
    python benchmarks/gpu_update_speed.py --device cpu --updates 60   # smoke run (no graph on a CPU)

Same sizes for every learner, from ``--recipe`` (default: the push DSRL-SAC recipe): features = the base's
observation (39), latent = horizon x action dim (16), MLP width and depth and critic count from its ``head``, batch
size from its ``algorithm``. Each learner samples its own replay buffer of ``--buffer`` random transitions (the
values do not change the cost) and does one gradient update per step, sampling included: SB3 through
``SAC.train(gradient_steps=n)``, vla_steer through ``ReplayBuffer.sample`` + the algorithm's update (the trainer's
``Learner`` path: metrics read back as floats after every update). The learners are timed in interleaved rounds so
that load from other jobs hits them alike; reported are updates/s and ratios to SB3. The vla_steer base is the
built-in DDIM policy with random weights (only DSRL-NA's distillation decodes through it). Writes
``benchmarks/results/gpu_update_speed[_<device>].json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from vla_steer.provenance import git_commit, hardware, package_versions

RESULTS = Path(__file__).parent / "results"
FEATURES, ACTION_DIM = 39, 4  # Meta-World's state observation and action


def sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def sb3_learner(recipe, device: torch.device, buffer_rows: int, latent_dim: int):
    """SB3 SAC with the recipe's widths on a dummy env of the right spaces, its buffer filled with random rows."""
    from stable_baselines3 import SAC

    h, a = recipe.head, recipe.algorithm

    class Spaces(gym.Env):
        observation_space = gym.spaces.Box(-np.inf, np.inf, (FEATURES,), np.float32)
        action_space = gym.spaces.Box(-h.bound, h.bound, (latent_dim,), np.float32)

        def reset(self, seed=None, options=None):  # only SB3's setup calls it
            return np.zeros(FEATURES, np.float32), {}

    model = SAC("MlpPolicy", Spaces(), learning_rate=a.critic_lr, buffer_size=buffer_rows, batch_size=a.batch_size,
                tau=a.tau, gamma=a.gamma, ent_coef="auto", target_entropy=0.0, device=device,
                policy_kwargs={"net_arch": [h.hidden_dim] * h.num_layers, "n_critics": h.num_critics})
    rng = np.random.default_rng(0)
    for _ in range(buffer_rows):
        model.replay_buffer.add(rng.standard_normal((1, FEATURES)).astype(np.float32),
                                rng.standard_normal((1, FEATURES)).astype(np.float32),
                                rng.uniform(-1, 1, (1, latent_dim)).astype(np.float32),
                                rng.standard_normal(1).astype(np.float32), np.zeros(1), [{}])
    model._setup_learn(total_timesteps=1)  # the logger train() writes to

    def run(updates: int) -> None:
        model.train(gradient_steps=updates, batch_size=a.batch_size)

    return run


def vla_steer_learner(recipe, algorithm: str, device: torch.device, buffer_rows: int, graph: bool):
    from accelerate import Accelerator

    from vla_steer.adapters.base import LatentLayout
    from vla_steer.adapters.native import NativePolicyAdapter
    from vla_steer.algorithms import build_algorithm
    from vla_steer.algorithms.base import as_floats
    from vla_steer.algorithms.configs import config_for_method
    from vla_steer.policies.base import ChunkPolicyConfig, build_chunk_policy
    from vla_steer.training.buffer import ReplayBuffer
    from vla_steer.training.cuda_graph import graphed_update

    b = recipe.base
    policy = build_chunk_policy(ChunkPolicyConfig(b.type, FEATURES, ACTION_DIM, b.horizon, b.n_action_steps,
                                                  b.hidden_dim, num_inference_steps=b.num_inference_steps))
    accelerator = Accelerator(cpu=device.type == "cpu")
    adapter = NativePolicyAdapter(policy.to(accelerator.device))
    layout = LatentLayout.from_head(recipe.head, adapter.noise_shape)
    algo = build_algorithm(config_for_method(recipe.algorithm, algorithm), recipe.head, adapter, layout, accelerator)
    g = torch.Generator().manual_seed(0)
    rows, chunk = buffer_rows, adapter.n_action_steps * ACTION_DIM
    buffer = ReplayBuffer(rows, device=accelerator.device)
    buffer.add({"features": torch.randn(rows, FEATURES, generator=g), "next_features": torch.randn(rows, FEATURES, generator=g),
                "decode_state": torch.randn(rows, FEATURES, generator=g), "next_decode_state": torch.randn(rows, FEATURES, generator=g),
                "latent": torch.randn(rows, layout.latent_dim, generator=g), "action": torch.randn(rows, chunk, generator=g),
                "reward": torch.randn(rows, generator=g), "discount": torch.full((rows,), 0.99),
                "terminated": torch.zeros(rows)})
    batch_size = recipe.algorithm.batch_size
    update = algo.update_on_device
    if graph:
        update = graphed_update(algo, buffer.sample(batch_size, g, device=accelerator.device))
        if update is None:
            return None

    def run(updates: int) -> None:
        for _ in range(updates):
            as_floats(update(buffer.sample(batch_size, g, device=accelerator.device)))  # as the Learner reads them

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/metaworld_push_dsrl_sac.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--updates", type=int, default=3000, help="timed updates per learner, over all rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--buffer", type=int, default=20_000, help="random transitions in each replay buffer")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    from vla_steer.config import load_recipe

    # SB3's actor takes the min over critics. No env is stepped here: a gymnasium id stands in for the recipe's, so
    # that a machine without its simulator (Meta-World) can still check the recipe.
    recipe = load_recipe(args.recipe, ["algorithm.actor_reduction=min", "env.id=Pendulum-v1", "env.reward_mode=env"])
    device = torch.device(args.device)
    latent_dim = recipe.base.horizon * ACTION_DIM
    learners = {"sb3_sac": sb3_learner(recipe, device, args.buffer, latent_dim)}
    for algorithm in ("dsrl_sac", "lpds", "dsrl_na"):
        learners[f"{algorithm} eager"] = vla_steer_learner(recipe, algorithm, device, args.buffer, graph=False)
        graphed = vla_steer_learner(recipe, algorithm, device, args.buffer, graph=True) if device.type == "cuda" else None
        if graphed is not None:
            learners[f"{algorithm} cuda graph"] = graphed

    seconds = dict.fromkeys(learners, 0.0)
    per_round = max(1, args.updates // args.rounds)
    for round_ in range(args.rounds):
        for name, run in learners.items():
            run(10)  # warm caches and the allocator after the other learners ran
            start = sync(device)
            run(per_round)
            seconds[name] += sync(device) - start
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{n} {per_round * (round_ + 1) / s:.0f}/s"
                                                               for n, s in seconds.items()), flush=True)
    timed = per_round * args.rounds
    rates = {name: timed / s for name, s in seconds.items()}
    h = recipe.head
    result = {
        "recipe": args.recipe, "device": str(device), "git_commit": git_commit(), "versions": package_versions(),
        "hardware": hardware(), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "sizes": {"features": FEATURES, "latent": latent_dim, "hidden_dim": h.hidden_dim, "num_layers": h.num_layers,
                  "num_critics": h.num_critics, "batch_size": recipe.algorithm.batch_size},
        "torch_threads": torch.get_num_threads(), "updates_timed": timed, "updates_per_s": rates,
        "ratio_to_sb3": {name: rate / rates["sb3_sac"] for name, rate in rates.items()},
    }
    output = args.output or RESULTS / f"gpu_update_speed{'' if device.type == 'cuda' else '_' + device.type}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    width = max(map(len, rates))
    for name, rate in rates.items():
        print(f"{name:<{width}}  {rate:8.1f} updates/s   x{rate / rates['sb3_sac']:.2f} of SB3")
    print(f"{timed} timed updates each on {result['gpu'] or device} -> {output}")


if __name__ == "__main__":
    main()
