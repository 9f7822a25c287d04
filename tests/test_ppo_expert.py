"""PPO experts (locomotion demonstrations): what is stored is safetensors + JSON, and the plain-torch actor rebuilt
from it acts exactly as SB3's deterministic policy on the same raw observations."""

import json

import gymnasium as gym
import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from vla_steer.data.ppo_expert import actor_from, export_actor, load_ppo_expert, train_ppo_expert


def test_the_rebuilt_actor_acts_as_sb3_on_raw_observations():
    envs = VecNormalize(make_vec_env("Hopper-v5", n_envs=2, seed=0), clip_obs=10.0)
    model = PPO("MlpPolicy", envs, seed=0, n_steps=64, batch_size=64, device="cpu")
    model.learn(total_timesteps=128)  # moves the weights and the observation statistics off their initial values
    actor = actor_from(*export_actor(model, envs))
    raw = np.stack([gym.make("Hopper-v5").reset(seed=i)[0] for i in range(5)]) + np.random.default_rng(0).normal(0, 0.5, (5, 11))
    theirs, _ = model.predict(envs.normalize_obs(raw), deterministic=True)
    np.testing.assert_allclose(actor(raw), np.clip(theirs, -1, 1), rtol=1e-5, atol=1e-5)


def test_a_trained_expert_is_stored_without_pickles_and_reloads(tmp_path):
    directory = train_ppo_expert("Hopper-v5", tmp_path / "expert", total_steps=2048, seed=0)
    assert sorted(p.name for p in directory.iterdir()) == ["actor.safetensors", "expert.json"]
    record = json.loads((directory / "expert.json").read_text())
    assert record["total_steps"] == 2048 and np.isfinite(record["eval_return"])
    expert = load_ppo_expert(directory)
    obs = gym.make("Hopper-v5").reset(seed=0)[0]
    assert expert(obs).shape == (3,) and np.all(np.abs(expert(obs)) <= 1)
