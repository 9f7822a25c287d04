"""Experts trained here by PPO, for tasks without a scripted one (Gymnasium MuJoCo locomotion: Hopper, Walker2d,
HalfCheetah), as the DSRL and LP-DS Gym experiments clone their bases from a noisy expert's data.

Training uses Stable-Baselines3's PPO (the optional ``experts`` extra: ``pip install -e ".[experts]"``): 8 envs in one
process, observations normalised by ``VecNormalize``. What is kept is plain data, never SB3's pickled zip: the actor's
weights as safetensors and its shape, observation statistics and training record as JSON. Acting rebuilds the
actor in plain torch (:class:`PPOActor`), so loading an expert needs neither SB3 nor unpickling.

On this CPU PPO runs at ~1.5k env steps/s; 300k steps (~4 min) give a "medium" Hopper (return ~1.2-1.5k), 1M an
expert one (~3k) (benchmarks on this machine: ../shared/research/envs.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vla_steer.files import write_atomically

ACTOR_FILE, CONFIG_FILE = "actor.safetensors", "expert.json"
HIDDEN = (64, 64)  # SB3's default MlpPolicy actor


class PPOActor(nn.Module):
    """SB3's ``MlpPolicy`` actor mean, in plain torch: normalise the observation, tanh MLP, linear head."""

    def __init__(self, obs_dim: int, action_dim: int, obs_mean: np.ndarray, obs_var: np.ndarray, clip_obs: float,
                 low: np.ndarray, high: np.ndarray):
        super().__init__()
        layers, width = [], obs_dim
        for hidden in HIDDEN:
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        self.policy_net, self.action_net = nn.Sequential(*layers), nn.Linear(width, action_dim)
        self.register_buffer("obs_mean", torch.as_tensor(obs_mean, dtype=torch.float32))
        self.register_buffer("obs_std", torch.as_tensor(np.sqrt(obs_var + 1e-8), dtype=torch.float32))
        self.clip_obs, self.low, self.high = clip_obs, np.asarray(low), np.asarray(high)

    @torch.no_grad()
    def forward(self, obs: np.ndarray) -> np.ndarray:
        x = ((torch.as_tensor(obs, dtype=torch.float32) - self.obs_mean) / self.obs_std).clamp(-self.clip_obs, self.clip_obs)
        return np.clip(self.action_net(self.policy_net(x)).numpy(), self.low, self.high).astype(np.float32)


def train_ppo_expert(env_id: str, directory: str | Path, *, total_steps: int = 300_000, seed: int = 0) -> Path:
    """Train a PPO expert on ``env_id`` and write it to ``directory`` (atomically: a crash leaves nothing)."""
    try:
        from stable_baselines3 import PPO
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.vec_env import VecNormalize
    except ImportError as exc:
        raise ImportError(f"training a PPO expert for {env_id!r} needs Stable-Baselines3: pip install -e \".[experts]\"") from exc
    from safetensors.torch import save_file

    start = time.time()
    envs = VecNormalize(make_vec_env(env_id, n_envs=8, seed=seed), norm_reward=True, clip_obs=10.0)
    model = PPO("MlpPolicy", envs, seed=seed, n_steps=256, batch_size=256, device="cpu", verbose=0)
    model.learn(total_timesteps=total_steps, progress_bar=False)
    config, tensors = export_actor(model, envs)
    config.update(env_id=env_id, total_steps=total_steps, seed=seed, train_seconds=time.time() - start)
    envs.close()
    expert = actor_from(config, tensors)
    config["eval_return"] = evaluate_expert(expert, env_id, episodes=5, seed=seed + 10_000)

    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / ACTOR_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))

    return write_atomically(Path(directory), write)


def export_actor(model, envs) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, tensors)`` of an SB3 PPO model's deterministic actor and its ``VecNormalize`` observation stats."""
    policy, space = model.policy, envs.action_space
    tensors = {f"policy_net.{k}": v.detach().clone() for k, v in policy.mlp_extractor.policy_net.state_dict().items()}
    tensors.update({f"action_net.{k}": v.detach().clone() for k, v in policy.action_net.state_dict().items()})
    config = {"hidden": list(HIDDEN), "obs_dim": int(envs.observation_space.shape[0]), "action_dim": int(space.shape[0]),
              "obs_mean": envs.obs_rms.mean.tolist(), "obs_var": envs.obs_rms.var.tolist(), "clip_obs": float(envs.clip_obs),
              "low": space.low.tolist(), "high": space.high.tolist()}
    return config, tensors


def actor_from(config: dict, tensors: dict[str, torch.Tensor]) -> PPOActor:
    actor = PPOActor(config["obs_dim"], config["action_dim"], np.asarray(config["obs_mean"]), np.asarray(config["obs_var"]),
                     config["clip_obs"], np.asarray(config["low"]), np.asarray(config["high"]))
    actor.load_state_dict({**tensors, "obs_mean": actor.obs_mean, "obs_std": actor.obs_std})
    return actor.eval()


def load_ppo_expert(directory: str | Path) -> PPOActor:
    """A trained expert from its safetensors + JSON (no pickle, no SB3)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    return actor_from(json.loads((directory / CONFIG_FILE).read_text()), load_file(str(directory / ACTOR_FILE)))


def evaluate_expert(expert: PPOActor, env_id: str, episodes: int = 5, seed: int = 0) -> float:
    """Mean undiscounted return of the deterministic expert over ``episodes`` episodes."""
    import gymnasium as gym

    env, returns = gym.make(env_id), []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(expert(obs))
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def ppo_expert(env_id: str, cache_dir: str | Path, total_steps: int = 300_000, seed: int = 0,
               show_progress: bool = True) -> PPOActor:
    """The cached expert for ``env_id`` (trained on first use)."""
    directory = Path(cache_dir).expanduser() / f"{env_id}_ppo{total_steps}_seed{seed}"
    if not (directory / CONFIG_FILE).is_file():
        if show_progress:
            print(f"training a PPO expert for {env_id} ({total_steps} steps, ~{total_steps / 1500 / 60:.0f} min on one "
                  f"core): {directory}")
        train_ppo_expert(env_id, directory, total_steps=total_steps, seed=seed)
    return load_ppo_expert(directory)
