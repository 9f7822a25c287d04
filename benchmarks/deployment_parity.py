"""Episode-by-episode parity of a trained run and its exported ``steered`` policy, acting deterministically.

The trainer's loop (its collector, the algorithm's head with eps = 0) and the deployed loop (LeRobot's env,
``preprocess_observation``, the task text, the exported policy's processors and ``select_action``, as ``lerobot-eval``
runs it) start ``--envs`` envs from the same seeds; with no random draw left, their returns must match per episode.

    python benchmarks/deployment_parity.py runs/bench/lerobot_diffusion_push_lpds/seed1 --envs 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from vla_steer.adapters.base import LatentLayout
from vla_steer.algorithms import build_algorithm
from vla_steer.config import recipe_from_dict
from vla_steer.pipeline import build_base
from vla_steer.training.checkpoint import load_tree
from vla_steer.training.collector import Collector


def trainer_returns(recipe, run: Path, seed: int, n: int) -> list[float]:
    base = build_base(recipe)
    layout = LatentLayout.from_head(recipe.head, base.adapter.noise_shape)
    algo = build_algorithm(recipe.algorithm, recipe.head, base.adapter, layout, Accelerator(cpu=True))
    algo.load_state_dict(load_tree(run / "checkpoints" / "last", "algorithm"))
    collector = Collector(recipe, base, layout, seed=seed)
    obs, _ = collector.envs.reset(seed=[seed + i for i in range(n)])
    returns, finished = np.zeros(n), np.zeros(n, bool)
    while not finished.all():
        context = collector.encode(obs)
        _, env_actions = collector.env_actions(context, algo.act(context.features, deterministic=True))
        obs, reward, terminated, truncated, _ = collector.envs.step(env_actions)
        returns += reward * ~finished
        finished |= terminated | truncated
    collector.close()
    return returns.tolist()


def deployed_returns(recipe, export: Path, seed: int, n: int) -> list[float]:
    from lerobot.envs.factory import make_env
    from lerobot.envs.utils import add_envs_task, preprocess_observation

    from vla_steer.envs.lerobot_envs import lerobot_env_config
    from vla_steer.lerobot_policy import SteeredPolicy

    policy = SteeredPolicy.from_pretrained(export)
    policy.config.deterministic = True
    preprocessor, postprocessor = policy.base_processors()
    config = lerobot_env_config(recipe.env.type, recipe.env.options)
    env = next(iter(make_env(config, n_envs=n)[config.type].values()))
    obs, _ = env.reset(seed=[seed + i for i in range(n)])
    policy.reset()
    returns, finished = np.zeros(n), np.zeros(n, bool)
    while not finished.all():
        batch = preprocessor(add_envs_task(env, preprocess_observation(obs)))
        with torch.inference_mode():
            action = postprocessor(policy.select_action(batch))
        obs, reward, terminated, truncated, _ = env.step(action.numpy())
        returns += reward * ~finished
        finished |= terminated | truncated
    env.close()
    return returns.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished run on a LeRobot env, exported to <run>/export")
    parser.add_argument("--envs", type=int, default=10)
    args = parser.parse_args()
    recipe = recipe_from_dict(json.loads((args.run / "recipe.json").read_text()), [f"env.num_envs={args.envs}"])
    seed = recipe.train.eval_seed
    ours = trainer_returns(recipe, args.run, seed, args.envs)
    theirs = deployed_returns(recipe, args.run / "export", seed, args.envs)
    print(json.dumps({"trainer": np.round(ours, 4).tolist(), "deployed": np.round(theirs, 4).tolist(),
                      "max_abs_difference": float(np.abs(np.array(ours) - np.array(theirs)).max())}, indent=1))


if __name__ == "__main__":
    main()
