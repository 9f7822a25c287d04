"""Environment registry: one name for every simulator family, flat float observations, chunked actions.

Env ids:
* ``metaworld/<task>`` (e.g. ``metaworld/push-v3``): Meta-World 3 MT1, goal observable, positions
  re-randomised at every reset.
* any id registered with gymnasium, including gymnasium-robotics (``FetchPush-v4``) and Box2D
  (``LunarLanderContinuous-v3``). Dict observations are flattened.

Every env reports ``info["is_success"]`` (False where the task has no notion of success).
"""

from __future__ import annotations

import difflib
from functools import lru_cache

import gymnasium as gym
import numpy as np

METAWORLD_PREFIX = "metaworld/"


@lru_cache(maxsize=1)
def _metaworld_tasks() -> tuple[str, ...]:
    from metaworld.policies import ENV_POLICY_MAP

    return tuple(sorted(ENV_POLICY_MAP))


@lru_cache(maxsize=1)
def _register_optional_families() -> None:
    try:  # registers Fetch / Adroit / ... with gymnasium
        import gymnasium_robotics

        gym.register_envs(gymnasium_robotics)
    except ImportError:
        pass


def validate_env_id(env_id: str) -> None:
    """Raise ``ValueError`` naming close matches if ``env_id`` is not something :func:`make_env` can build."""
    if env_id.startswith(METAWORLD_PREFIX):
        task = env_id[len(METAWORLD_PREFIX):]
        tasks = _metaworld_tasks()
        if task not in tasks:
            close = difflib.get_close_matches(task, tasks, n=3)
            raise ValueError(
                f"unknown Meta-World task {task!r} in env id {env_id!r}"
                + (f"; did you mean {[METAWORLD_PREFIX + c for c in close]}?" if close else "")
                + f" Tasks look like 'metaworld/push-v3' ({len(tasks)} available)."
            )
        return
    _register_optional_families()
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry) + [METAWORLD_PREFIX + t for t in _metaworld_tasks()], n=3)
        raise ValueError(
            f"unknown env id {env_id!r}" + (f"; did you mean {close}?" if close else "")
            + " Use a gymnasium id (e.g. 'LunarLanderContinuous-v3', 'FetchPush-v4') or 'metaworld/<task>-v3'."
        )


class SuccessInfo(gym.Wrapper):
    """Normalises the success flag to ``info["is_success"]`` and optionally rewrites the reward.

    ``reward_mode``: ``env`` keeps the env's reward; ``sparse`` gives -1 per step and 0 on a success step
    (the Robomimic convention DSRL uses); ``dense_minus_one`` gives ``reward / reward_scale - 1``.
    """

    def __init__(self, env, reward_mode: str = "env", terminate_on_success: bool = False, reward_scale: float = 1.0):
        super().__init__(env)
        self.reward_mode = reward_mode
        self.terminate_on_success = terminate_on_success
        self.reward_scale = reward_scale

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        success = bool(info.get("is_success", info.get("success", False)))
        info["is_success"] = success
        if self.reward_mode == "sparse":
            reward = 0.0 if success else -1.0
        elif self.reward_mode == "dense_minus_one":
            reward = float(reward) / self.reward_scale - 1.0
        if success and self.terminate_on_success:
            terminated = True
        return obs, float(reward), terminated, truncated, info


class FlattenFloatObservation(gym.ObservationWrapper):
    """Dict or array observations -> one float32 vector."""

    def __init__(self, env):
        super().__init__(env)
        self._is_dict = isinstance(env.observation_space, gym.spaces.Dict)
        space = gym.spaces.flatten_space(env.observation_space) if self._is_dict else env.observation_space
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=space.shape, dtype=np.float32)

    def observation(self, observation):
        if self._is_dict:
            observation = gym.spaces.flatten(self.env.observation_space, observation)
        return np.asarray(observation, dtype=np.float32)


class ActionChunk(gym.Wrapper):
    """The action is a chunk ``[n_steps, action_dim]``; rows run in order until the episode ends.

    Returns the last observation, the *sum* of the per-step rewards, and in ``info``: ``chunk_steps`` (rows
    actually executed) and ``is_success`` (true if any executed step succeeded).
    """

    def __init__(self, env, n_steps: int):
        super().__init__(env)
        self.n_steps = n_steps
        base = env.action_space
        self.action_space = gym.spaces.Box(
            np.broadcast_to(base.low, (n_steps, *base.shape)).astype(np.float32),
            np.broadcast_to(base.high, (n_steps, *base.shape)).astype(np.float32),
            dtype=np.float32,
        )

    def step(self, chunk):
        total, success, info = 0.0, False, {}
        obs = terminated = truncated = None
        for k, action in enumerate(np.asarray(chunk)):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += reward
            success = success or bool(info.get("is_success", False))
            if terminated or truncated:
                break
        info = dict(info, chunk_steps=k + 1, is_success=success)
        return obs, total, terminated, truncated, info


def make_env(
    env_id: str,
    *,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    reward_mode: str = "env",
    terminate_on_success: bool = False,
    reward_scale: float = 1.0,
    chunk_steps: int | None = None,
    kwargs: dict | None = None,
) -> gym.Env:
    """Build one environment with flat float observations and ``info["is_success"]``."""
    validate_env_id(env_id)
    kwargs = {"disable_env_checker": True, **(kwargs or {})}
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    if env_id.startswith(METAWORLD_PREFIX):
        env = gym.make("Meta-World/MT1", env_name=env_id[len(METAWORLD_PREFIX):], seed=seed, **kwargs)
    else:
        env = gym.make(env_id, **kwargs)
    env = SuccessInfo(env, reward_mode, terminate_on_success, reward_scale)
    env = FlattenFloatObservation(env)
    if chunk_steps is not None:
        env = ActionChunk(env, chunk_steps)
    env.action_space.seed(seed)
    return env
