"""This project's fast Meta-World env, registered as a LeRobot ``EnvConfig`` so that ``lerobot-eval`` runs it too.

LeRobot's own ``metaworld`` env renders a 480 px camera at every step (a few steps/s on a 2-core CPU). This
one emits LeRobot's *raw* observation keys, the ones ``lerobot.envs.utils.preprocess_observation`` reads:

* ``agent_pos``: hand xyz + gripper opening (4), like LeRobot's Meta-World env;
* ``environment_state``: Meta-World's whole flat observation (39), goal included;
* ``pixels`` (``obs_type="pixels_agent_pos"``): a small ``uint8`` ``[H, W, 3]`` image from the ``corner2``
  camera with the software-GL fast settings of :class:`vla_steer.envs.registry.PixelsAndState`.

It exposes ``task_description`` (LeRobot's Meta-World instruction), which ``add_envs_task`` reads, reports
``info["is_success"]`` and can end an episode on success, which ``lerobot-eval`` needs to count it (it reads
success at an episode's last step). ``lerobot-eval --env.type=vla_steer_meta_world --env.task=push-v3`` builds it
once ``lerobot_policy_steered`` is installed (LeRobot imports that plugin, which imports this module). The type
name avoids the substring ``metaworld``: LeRobot's ``make_env`` routes every such type to its own Meta-World.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_IMAGE, OBS_STATE

from vla_steer.envs.registry import METAWORLD_PREFIX, PixelsAndState, make_env, task_description

GYM_ID = "vla_steer/MetaWorld-v0"
ENV_TYPE = "vla_steer_meta_world"
OBS_TYPES = ("environment_state_agent_pos", "pixels_agent_pos")
AGENT_POS_DIM, FLAT_DIM = 4, 39


class MetaWorldLeRobotEnv(gym.Env):
    """One Meta-World task with LeRobot's raw observation keys (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, task: str = "push-v3", obs_type: str = "environment_state_agent_pos", image_size: int = 64,
                 episode_length: int = 150, reward_mode: str = "dense_minus_one", reward_scale: float = 10.0,
                 terminate_on_success: bool = True, render_mode: str = "rgb_array", seed: int | None = None):
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type={obs_type!r}: use one of {', '.join(OBS_TYPES)}")
        self.task, self.obs_type, self.render_mode = task, obs_type, render_mode
        self._env_kwargs = dict(max_episode_steps=episode_length, reward_mode=reward_mode, reward_scale=reward_scale,
                                terminate_on_success=terminate_on_success, image_size=image_size)
        self._env = self._make(seed)
        self.task_description = task_description(METAWORLD_PREFIX + task)
        self._max_episode_steps = episode_length  # lerobot-eval reads it
        spaces = {
            "agent_pos": gym.spaces.Box(-np.inf, np.inf, (AGENT_POS_DIM,), np.float32),
            "environment_state": gym.spaces.Box(-np.inf, np.inf, (FLAT_DIM,), np.float32),
        }
        if obs_type == "pixels_agent_pos":
            spaces = {"agent_pos": spaces["agent_pos"],
                      "pixels": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)}
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = self._env.action_space

    def _make(self, seed: int | None) -> PixelsAndState:
        # Rendering is always set up: lerobot-eval records videos of its first episodes through render().
        return make_env(METAWORLD_PREFIX + self.task, seed=seed, observation="pixels_state", state="full",
                        **self._env_kwargs)

    @property
    def flat_observation(self) -> np.ndarray:
        """Meta-World's flat observation, what the scripted experts act on."""
        return self._env.flat_observation

    def _observation(self, observation: dict) -> dict:
        flat = np.asarray(self._env.flat_observation, dtype=np.float32)
        out = {"agent_pos": flat[:AGENT_POS_DIM].copy()}
        if self.obs_type == "pixels_agent_pos":
            image = observation["observation.image"]
            out["pixels"] = np.ascontiguousarray((image.transpose(1, 2, 0) * 255).round().astype(np.uint8))
        else:
            out["environment_state"] = flat
        return out

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            # Meta-World samples goal and object positions from the seed its env is *made* with (reset's seed does
            # not reach that sampler), so a seeded reset starts a freshly seeded env: same seed, same start states.
            self._env.close()
            self._env = self._make(seed)
        observation, info = self._env.reset(seed=seed, options=options)
        return self._observation(observation), info

    def step(self, action):
        observation, reward, terminated, truncated, info = self._env.step(np.asarray(action, dtype=np.float32))
        return self._observation(observation), reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        return self._env.render_rgb()  # the outermost wrapper (PixelsAndState) renders

    def close(self) -> None:
        self._env.close()


if GYM_ID not in gym.registry:
    # no OrderEnforcing wrapper: add_envs_task looks for task_description on the env itself
    gym.register(GYM_ID, entry_point=MetaWorldLeRobotEnv, order_enforce=False)


@EnvConfig.register_subclass(ENV_TYPE)
@dataclass
class FastMetaWorldEnvConfig(EnvConfig):
    """LeRobot env config of :class:`MetaWorldLeRobotEnv`; ``task`` is a Meta-World task such as ``push-v3``."""

    task: str | None = "push-v3"
    fps: int = 80
    episode_length: int = 150
    obs_type: str = "environment_state_agent_pos"
    image_size: int = 64
    reward_mode: str = "dense_minus_one"  # Meta-World's shaped reward / reward_scale - 1
    reward_scale: float = 10.0
    terminate_on_success: bool = True
    features: dict[str, PolicyFeature] = field(default_factory=dict)
    features_map: dict[str, str] = field(default_factory=lambda: {
        ACTION: ACTION, "agent_pos": OBS_STATE, "environment_state": OBS_ENV_STATE, "pixels": OBS_IMAGE})

    def __post_init__(self):
        if self.obs_type not in OBS_TYPES:
            raise ValueError(f"env.obs_type={self.obs_type!r}: use one of {', '.join(OBS_TYPES)}")
        self.features = {ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(4,)),
                         "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(AGENT_POS_DIM,))}
        if self.obs_type == "pixels_agent_pos":
            self.features["pixels"] = PolicyFeature(type=FeatureType.VISUAL, shape=(self.image_size, self.image_size, 3))
        else:
            self.features["environment_state"] = PolicyFeature(type=FeatureType.ENV, shape=(FLAT_DIM,))

    @property
    def gym_id(self) -> str:
        return GYM_ID

    @property
    def gym_kwargs(self) -> dict:
        return dict(task=self.task, obs_type=self.obs_type, image_size=self.image_size,
                    episode_length=self.episode_length, reward_mode=self.reward_mode,
                    reward_scale=self.reward_scale, terminate_on_success=self.terminate_on_success)
