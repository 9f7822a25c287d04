"""Recipe -> artefacts: demonstrations, a BC base policy, an adapter. Each step is cached by content."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import gymnasium as gym
from accelerate import Accelerator

from vla_steer.adapters import NativePolicyAdapter, SteerableAdapter
from vla_steer.config import Recipe
from vla_steer.data.demos import generate_demonstrations
from vla_steer.envs.registry import STATE_KEY, make_env, task_description
from vla_steer.policies import ChunkPolicyConfig, load_chunk_policy
from vla_steer.policies.bc import train_bc
from vla_steer.policies.smolvla_bc import TinySmolVLASpec, ensure_tiny_vlm, load_smolvla_base, train_smolvla_bc


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
        only_successful=d.only_successful, env_kwargs=recipe.env.kwargs,
        observation_kwargs=recipe.env.observation_kwargs(), show_progress=show_progress,
    )


def env_dims(recipe: Recipe) -> tuple[int, int]:
    """``(state_dim, action_dim)`` of the recipe's env (the state part of image observations)."""
    env = make_env(recipe.env.id, seed=0, kwargs=recipe.env.kwargs, **recipe.env.observation_kwargs())
    space = env.observation_space
    dims = (space[STATE_KEY] if isinstance(space, gym.spaces.Dict) else space).shape[0], env.action_space.shape[0]
    env.close()
    return dims


def smolvla_spec(recipe: Recipe) -> TinySmolVLASpec:
    b = recipe.base
    return TinySmolVLASpec(image_size=recipe.env.image_size, hidden_size=b.hidden_dim, num_vlm_layers=b.num_layers,
                           chunk_size=b.horizon, n_action_steps=b.n_action_steps, num_steps=b.num_inference_steps,
                           max_action_dim=env_dims(recipe)[1])


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
    if recipe.base.type == "smolvla":
        return _ensure_smolvla_base(recipe, demos_root, accelerator, show_progress)
    cfg = base_policy_config(recipe)
    b = recipe.base
    key = _digest({"demos": demos_root.name, "policy": asdict(cfg), "steps": b.bc_steps, "batch": b.bc_batch_size,
                   "lr": b.bc_lr, "seed": b.seed})  # same key as before _digest existed: cached bases stay valid
    out = cache_dir(recipe) / "bases" / f"{cfg.type}-{key}"
    if not (out / "model.safetensors").is_file():
        train_bc(cfg, demos_root, steps=b.bc_steps, batch_size=b.bc_batch_size, lr=b.bc_lr, seed=b.seed,
                 output_dir=out, accelerator=accelerator, show_progress=show_progress)
    accelerator.wait_for_everyone()
    return out


def _ensure_smolvla_base(recipe: Recipe, demos_root: Path, accelerator: Accelerator, show_progress: bool) -> Path:
    spec, b = smolvla_spec(recipe), recipe.base
    vlm_dir = cache_dir(recipe) / "vlms" / f"tiny-smolvlm-{_digest(asdict(spec))}"
    if accelerator.is_main_process:
        ensure_tiny_vlm(vlm_dir, spec)
    accelerator.wait_for_everyone()
    key = _digest({"demos": demos_root.name, "spec": asdict(spec), "vlm": vlm_dir.name, "steps": b.bc_steps,
                   "batch": b.bc_batch_size, "lr": b.bc_lr, "seed": b.seed})
    out = cache_dir(recipe) / "bases" / f"smolvla-{key}"
    if not (out / "model.safetensors").is_file():
        train_smolvla_bc(demos_root, out, vlm_dir, spec, steps=b.bc_steps, batch_size=b.bc_batch_size, lr=b.bc_lr,
                         seed=b.seed, accelerator=accelerator, show_progress=show_progress)
    accelerator.wait_for_everyone()
    return out


def _digest(payload: dict) -> str:
    """Content key of a cached artefact: 16 hex digits of the SHA-256 of the canonical JSON."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _smolvla_adapter(recipe: Recipe, path: Path, device) -> SteerableAdapter:
    """The SmolVLA adapter on raw env observations: the base's own preprocessor (plus the task text, which the
    env does not emit) in, environment-space actions out."""
    from vla_steer.adapters.smolvla import SmolVLAAdapter

    policy, preprocessor, postprocessor = load_smolvla_base(path, device)
    task = task_description(recipe.env.id)

    def preprocess(observation: dict) -> dict:
        batch_size = observation[STATE_KEY].shape[0]
        return preprocessor({**observation, "task": [task] * batch_size})

    return SmolVLAAdapter(policy, preprocessor=preprocess, postprocessor=postprocessor)


def build_adapter(recipe: Recipe, accelerator: Accelerator | None = None, show_progress: bool = True) -> SteerableAdapter:
    accelerator = accelerator or Accelerator(cpu=True)
    if recipe.base.type == "smolvla":
        return _smolvla_adapter(recipe, ensure_base(recipe, accelerator, show_progress), accelerator.device)
    policy = load_chunk_policy(ensure_base(recipe, accelerator, show_progress), device=accelerator.device)
    obs_dim, action_dim = env_dims(recipe)
    if (policy.config.obs_dim, policy.config.action_dim) != (obs_dim, action_dim):
        raise ValueError(f"base policy expects obs_dim={policy.config.obs_dim}, action_dim={policy.config.action_dim} "
                         f"but {recipe.env.id} has obs_dim={obs_dim}, action_dim={action_dim}")
    return NativePolicyAdapter(policy)
