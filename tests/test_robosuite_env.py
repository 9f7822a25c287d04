"""robosuite Lift as a built-in env: flat state observations, per-env seeding that leaves numpy's global RNG alone,
robosuite's own success check, and a scripted expert that lifts the cube."""

import numpy as np

from vla_steer.data.experts import make_expert
from vla_steer.envs.registry import make_env


def test_lift_is_seeded_per_env_and_leaves_the_global_rng_alone():
    first, second = (make_env("robosuite/Lift-v0", seed=0, max_episode_steps=100) for _ in range(2))
    assert first.observation_space.shape == (53,) and first.action_space.shape == (7,)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a, _ = first.reset(seed=3)
    first.step(np.zeros(7, np.float32))
    assert np.array_equal(np.random.get_state()[1], before)  # robosuite's placement draws used the env's own stream
    b, _ = second.reset(seed=3)
    c, _ = second.reset(seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(b[-10:-7], c[-10:-7])  # another seed, another cube position


def test_the_scripted_lift_expert_lifts_the_cube():
    env = make_env("robosuite/Lift-v0", seed=0, max_episode_steps=100, reward_mode="sparse", terminate_on_success=True)
    expert = make_expert("robosuite/Lift-v0")
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        for step in range(100):
            obs, reward, terminated, truncated, info = env.step(expert(obs, env))
            if terminated or truncated:
                break
        assert terminated and info["is_success"] and reward == 0.0, f"seed {seed}: no lift in {step + 1} steps"
