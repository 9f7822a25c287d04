"""Recipe -> artefacts: demonstrations, a BC base policy, an adapter. Each step is cached by content."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from accelerate import Accelerator

from vla_steer.adapters import NativePolicyAdapter
from vla_steer.config import Recipe
from vla_steer.data.demos import generate_demonstrations
from vla_steer.envs.registry import make_env
from vla_steer.policies import ChunkPolicyConfig, load_chunk_policy
from vla_steer.policies.bc import train_bc


def cache_dir(recipe: Recipe) -> Path:
    return Path(recipe.train.cache_dir).expanduser()


def ensure_demos(recipe: Recipe, show_progress: bool = True) -> Path:
    if recipe.demos.dataset:
        root = Path(recipe.demos.dataset).expanduser()
        if not (root / "meta" / "info.json").is_file():
            raise FileNotFoundError(f"demos.dataset={str(root)!r} is not a LeRobotDataset (no meta/info.json)")
        return root
    d = recipe.demos
    return generate_demonstrations(
        recipe.env.id, num_episodes=d.num_episodes, action_noise=d.action_noise, seed=d.seed,
        max_episode_steps=d.max_episode_steps or recipe.env.max_episode_steps, cache_dir=cache_dir(recipe) / "demos",
        only_successful=d.only_successful, env_kwargs=recipe.env.kwargs, show_progress=show_progress,
    )


def env_dims(recipe: Recipe) -> tuple[int, int]:
    env = make_env(recipe.env.id, seed=0, kwargs=recipe.env.kwargs)
    dims = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    return dims


def base_policy_config(recipe: Recipe) -> ChunkPolicyConfig:
    obs_dim, action_dim = env_dims(recipe)
    b = recipe.base
    return ChunkPolicyConfig(type=b.type, obs_dim=obs_dim, action_dim=action_dim, horizon=b.horizon,
                             n_action_steps=b.n_action_steps, hidden_dim=b.hidden_dim, num_layers=b.num_layers,
                             num_train_timesteps=b.num_train_timesteps, num_inference_steps=b.num_inference_steps)


def ensure_base(recipe: Recipe, accelerator: Accelerator | None = None, show_progress: bool = True) -> Path:
    """Path of the BC base for this recipe, training it (once) if needed."""
    if recipe.base.path:
        return Path(recipe.base.path).expanduser()
    accelerator = accelerator or Accelerator(cpu=True)
    demos_root = ensure_demos(recipe, show_progress) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    demos_root = demos_root or ensure_demos(recipe, show_progress=False)  # cached by now
    cfg = base_policy_config(recipe)
    b = recipe.base
    key = hashlib.sha256(json.dumps({"demos": demos_root.name, "policy": asdict(cfg), "steps": b.bc_steps,
                                     "batch": b.bc_batch_size, "lr": b.bc_lr, "seed": b.seed}, sort_keys=True).encode()).hexdigest()[:16]
    out = cache_dir(recipe) / "bases" / f"{cfg.type}-{key}"
    if not (out / "model.safetensors").is_file():
        train_bc(cfg, demos_root, steps=b.bc_steps, batch_size=b.bc_batch_size, lr=b.bc_lr, seed=b.seed,
                 output_dir=out, accelerator=accelerator, show_progress=show_progress)
    accelerator.wait_for_everyone()
    return out


def build_adapter(recipe: Recipe, accelerator: Accelerator | None = None, show_progress: bool = True) -> NativePolicyAdapter:
    accelerator = accelerator or Accelerator(cpu=True)
    policy = load_chunk_policy(ensure_base(recipe, accelerator, show_progress), device=accelerator.device)
    obs_dim, action_dim = env_dims(recipe)
    if (policy.config.obs_dim, policy.config.action_dim) != (obs_dim, action_dim):
        raise ValueError(f"base policy expects obs_dim={policy.config.obs_dim}, action_dim={policy.config.action_dim} "
                         f"but {recipe.env.id} has obs_dim={obs_dim}, action_dim={action_dim}")
    return NativePolicyAdapter(policy)
