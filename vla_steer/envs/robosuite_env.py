"""robosuite's RoboMimic tasks (Lift, PickPlaceCan) as gymnasium envs with flat state observations.

Registered as ``robosuite/Lift-v0`` and ``robosuite/PickPlaceCan-v0`` when robosuite is installed (the optional
``robosuite`` extra: robosuite 1.5.1, the release that installs beside LeRobot 0.4.4). The observation is the
robot's proprioception followed by the object state (``robot0_proprio-state``, ``object-state``), the action
robosuite's default Panda OSC_POSE delta (7-d: position, rotation, gripper), ``info["is_success"]`` robosuite's own
success check. Episodes end only by the time limit (``env.max_episode_steps``; DSRL's RoboMimic settings use 300 for
Lift and Can). robosuite draws object placements from numpy's global RNG: each env keeps its own stream and swaps
it in around resets and steps, so envs are reproducible per seed and nothing else's random numbers move.
"""

from __future__ import annotations

import logging

import gymnasium as gym
import numpy as np

OBSERVATION_KEYS = ("robot0_proprio-state", "object-state")
TASKS = ("Lift", "PickPlaceCan")
PREFIX = "robosuite/"


class RobosuiteEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, task: str = "Lift", control_freq: int = 20, reward_shaping: bool = True):
        import robosuite

        logging.getLogger("robosuite_logs").setLevel(logging.WARNING)  # one INFO line per env built otherwise
        self._rng_state = np.random.RandomState(0).get_state()
        # construction draws too (Lift's cube size): from the env's own stream, so every env is built alike
        self.env = self._own_rng(lambda: robosuite.make(
            task, robots="Panda", has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False,
            use_object_obs=True, control_freq=control_freq, reward_shaping=reward_shaping, horizon=10 ** 9,
            ignore_done=True, hard_reset=False))
        self.observations: dict[str, np.ndarray] = {}  # robosuite's dict of the last step, for scripted experts
        low, high = self.env.action_spec
        self.action_space = gym.spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        size = sum(int(np.prod(self.env.observation_spec()[key].shape)) for key in OBSERVATION_KEYS)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)

    def _own_rng(self, call):
        outer = np.random.get_state()
        np.random.set_state(self._rng_state)
        try:
            return call()
        finally:
            self._rng_state = np.random.get_state()
            np.random.set_state(outer)

    def _flat(self, observations: dict) -> np.ndarray:
        self.observations = observations
        return np.concatenate([np.asarray(observations[key], np.float32).ravel() for key in OBSERVATION_KEYS])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng_state = np.random.RandomState(seed).get_state()
        return self._flat(self._own_rng(self.env.reset)), {}

    def step(self, action):
        observations, reward, _, info = self._own_rng(lambda: self.env.step(np.asarray(action, np.float64)))
        info = dict(info, is_success=bool(self.env._check_success()))
        return self._flat(observations), float(reward), False, False, info

    def close(self):
        self.env.close()


def register() -> None:
    """Register ``robosuite/<task>-v0`` for every task in :data:`TASKS` (a no-op without robosuite)."""
    try:
        import robosuite  # noqa: F401
    except ImportError:
        return
    for task in TASKS:
        if f"{PREFIX}{task}-v0" not in gym.registry:
            gym.register(f"{PREFIX}{task}-v0", entry_point=RobosuiteEnv, kwargs={"task": task})
