"""Environment registry: one name for every simulator family, flat float observations, chunked actions.

Env ids:
* ``metaworld/<task>`` (e.g. ``metaworld/push-v3``): Meta-World 3 MT1, goal observable, positions
  re-randomised at every reset.
* any id registered with gymnasium, including gymnasium-robotics (``FetchPush-v4``) and Box2D
  (``LunarLanderContinuous-v3``). Dict observations are flattened.

Observations are a flat float vector (``observation="state"``) or, for Meta-World,
``observation="pixels_state"``: a dict with a rendered camera image ``observation.image`` (float32
``[3, H, W]`` in [0, 1], LeRobot's layout after its own preprocessing) and ``observation.state`` (the flat
vector, or with ``state="agent_pos"`` only the hand position and gripper, as LeRobot's Meta-World env).

* a task set ``a+b+c`` of built-in ids sharing observation and action spaces (e.g.
  ``metaworld/reach-v3+push-v3+drawer-close-v3``; a bare task after the first ``+`` keeps its family's prefix):
  env ``task_index`` runs task ``task_index mod n`` (a vector env spreads its envs over the tasks), and a state
  observation ends with the one-hot of the task, so a built-in base and its head can tell the tasks apart (a VLA
  reads the task text instead: :func:`task_description` gives each task's).

Every env reports ``info["is_success"]`` (False where the task has no notion of success).
"""

from __future__ import annotations

import difflib
import json
from collections import deque
from functools import lru_cache

import gymnasium as gym
import numpy as np

METAWORLD_PREFIX = "metaworld/"
IMAGE_KEY, STATE_KEY = "observation.image", "observation.state"


@lru_cache(maxsize=1)
def metaworld_task_descriptions() -> dict[str, str]:
    """Meta-World task -> language instruction, from the JSON LeRobot ships (read, not imported)."""
    import importlib.resources

    return json.loads((importlib.resources.files("lerobot.envs") / "metaworld_config.json").read_text())["TASK_DESCRIPTIONS"]


def task_ids(env_id: str) -> list[str]:
    """The tasks of a task set ``a+b+c`` as full ids (``metaworld/reach-v3+push-v3`` -> both with the prefix), or
    ``[env_id]`` for a single env."""
    first, *rest = env_id.split("+")
    prefix = first[: first.index("/") + 1] if "/" in first else ""
    return [first] + [task if "/" in task else prefix + task for task in rest]


def task_description(env_id: str, task_index: int = 0) -> str:
    """The language instruction for ``env_id`` (for a task set: of its task ``task_index mod n``): Meta-World's task
    text as LeRobot ships it, else the id itself."""
    tasks = task_ids(env_id)
    env_id = tasks[task_index % len(tasks)]
    if env_id.startswith(METAWORLD_PREFIX):
        return metaworld_task_descriptions().get(env_id[len(METAWORLD_PREFIX):], env_id)
    return env_id


@lru_cache(maxsize=1)
def _metaworld_tasks() -> tuple[str, ...]:
    from metaworld.policies import ENV_POLICY_MAP

    return tuple(sorted(ENV_POLICY_MAP))


@lru_cache(maxsize=1)
def _register_optional_families(env_id: str = "") -> None:
    try:  # registers Fetch / Adroit / ... with gymnasium
        import gymnasium_robotics

        gym.register_envs(gymnasium_robotics)
    except ImportError:
        pass
    if env_id.startswith("robosuite/"):  # robosuite is slow to import: only when asked for
        from vla_steer.envs.robosuite_env import register

        register()


def validate_env_id(env_id: str) -> None:
    """Raise ``ValueError`` naming close matches if ``env_id`` is not something :func:`make_env` can build."""
    tasks = task_ids(env_id)
    if len(tasks) > 1:
        if len(set(tasks)) < len(tasks):
            raise ValueError(f"task set {env_id!r} names a task twice")
        for task in tasks:
            validate_env_id(task)
        return
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
    _register_optional_families(env_id)
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry) + [METAWORLD_PREFIX + t for t in _metaworld_tasks()], n=3)
        raise ValueError(
            f"unknown env id {env_id!r}" + (f"; did you mean {close}?" if close else "")
            + " Use a gymnasium id (e.g. 'LunarLanderContinuous-v3', 'FetchPush-v4'), 'metaworld/<task>-v3' or, with "
            "the robosuite extra installed, 'robosuite/Lift-v0' / 'robosuite/PickPlaceCan-v0'."
        )


def shaped_reward(reward, success, mode: str, scale: float):
    """The recipe's reward from the env's (``env.reward_mode``): ``env`` as it is; ``sparse`` -1 per step and 0 on a
    success step; ``dense_minus_one`` ``reward / scale - 1``. Works on floats and on numpy / torch arrays alike."""
    if mode == "sparse":
        return success * 1.0 - 1.0
    if mode == "dense_minus_one":
        return reward / scale - 1.0
    return reward


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
        reward = shaped_reward(float(reward), success, self.reward_mode, self.reward_scale)
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


class TaskOneHot(gym.ObservationWrapper):
    """Appends the one-hot of the task (``index`` of ``n``) to a flat observation: a task set's state."""

    def __init__(self, env, index: int, n: int):
        super().__init__(env)
        self.one_hot = np.eye(n, dtype=np.float32)[index]
        low, high = env.observation_space.low, env.observation_space.high
        self.observation_space = gym.spaces.Box(np.concatenate([low, np.zeros(n, np.float32)]),
                                                np.concatenate([high, np.ones(n, np.float32)]), dtype=np.float32)

    def observation(self, observation):
        return np.concatenate([observation, self.one_hot])


class ActionChunk(gym.Wrapper):
    """The action is a chunk ``[n_steps, action_dim]``; rows run in order until the episode ends.

    Returns the last observation, the *sum* of the per-step rewards, and in ``info``: ``chunk_steps`` (rows
    actually executed) and ``is_success`` (true if any executed step succeeded).

    ``n_obs_steps > 1``: the observation is the history of the last ``n_obs_steps`` env steps, stacked on a new
    first axis, oldest first, filled with copies of the first observation after a reset. That is what LeRobot's
    policies hold in their observation queues when they are called every env step, so a policy queried once per
    chunk sees the frames it would have seen under ``lerobot-eval``.

    ``keep_frames``: ``info["frames"]`` lists every executed step as ``{"observation": the observation the action
    was taken from, "action", "reward", "success", "terminated", "intervention"}`` (for recording rollouts as a
    dataset).

    Robot envs report a person's intervention per step (``info["is_intervention"]``, ``info["executed_action"]``):
    the chunk's ``info["intervened"]`` says whether any row was replaced, ``info["executed_actions"]`` holds the
    rows as executed (the chunk itself where no one intervened), and frames record what was executed.
    """

    def __init__(self, env, n_steps: int, n_obs_steps: int = 1, keep_frames: bool = False):
        super().__init__(env)
        self.n_steps, self.n_obs_steps, self.keep_frames = n_steps, n_obs_steps, keep_frames
        base = env.action_space
        self.action_space = gym.spaces.Box(
            np.broadcast_to(base.low, (n_steps, *base.shape)).astype(np.float32),
            np.broadcast_to(base.high, (n_steps, *base.shape)).astype(np.float32),
            dtype=np.float32,
        )
        if n_obs_steps > 1:
            self.observation_space = _stacked_space(env.observation_space, n_obs_steps)
        self._history: deque = deque(maxlen=n_obs_steps)

    def _observation(self):
        if self.n_obs_steps == 1:
            return self._history[-1]
        frames = list(self._history)
        if isinstance(frames[0], dict):
            return {key: np.stack([frame[key] for frame in frames]) for key in frames[0]}
        return np.stack(frames)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._history.extend([obs] * self.n_obs_steps)
        return self._observation(), info

    def step(self, chunk):
        total, success, info, frames = 0.0, False, {}, []
        terminated = truncated = None
        chunk = np.asarray(chunk)
        executed, intervened = np.array(chunk, dtype=np.float32), False
        for k, action in enumerate(chunk):
            obs, reward, terminated, truncated, info = self.env.step(action)
            success = success or bool(info.get("is_success", False))
            if info.get("is_intervention", False):  # a person's action ran instead of this row (robot envs)
                executed[k], intervened = np.asarray(info["executed_action"], np.float32).reshape(-1), True
            if self.keep_frames:
                frames.append({"observation": self._history[-1], "action": executed[k],
                               "reward": float(reward), "success": bool(info.get("is_success", False)),
                               "terminated": bool(terminated), "intervention": bool(info.get("is_intervention", False))})
            self._history.append(obs)
            total += reward
            if terminated or truncated:
                break
        info = dict(info, chunk_steps=k + 1, is_success=success, intervened=intervened, executed_actions=executed)
        if self.keep_frames:
            info["frames"] = frames
        return self._observation(), total, terminated, truncated, info


def _stacked_space(space: gym.Space, n: int) -> gym.Space:
    """``space`` with a new first axis of length ``n`` (per key for a Dict space)."""
    if isinstance(space, gym.spaces.Dict):
        return gym.spaces.Dict({key: _stacked_space(sub, n) for key, sub in space.spaces.items()})
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"observation history needs Box observations, got {space}")
    return gym.spaces.Box(np.broadcast_to(space.low, (n, *space.shape)), np.broadcast_to(space.high, (n, *space.shape)),
                          dtype=space.dtype)


class PixelsAndState(gym.ObservationWrapper):
    """Flat observation -> ``{"observation.image": [3, H, W] float in [0, 1], "observation.state": [d]}``.

    Rendering runs with the software-GL fast settings (no shadow map, no multisampling, no reflections or
    skybox): about 8x faster under Mesa's llvmpipe at 64 px, and the scene stays legible. Meta-World's
    ``corner2`` camera is moved where LeRobot puts it and its upside-down image is flipped, as LeRobot does.
    """

    def __init__(self, env, image_size: int, camera: str, state: str = "full"):
        super().__init__(env)
        import mujoco

        if state not in ("full", "agent_pos"):
            raise ValueError(f"state={state!r}: use 'full' (the whole flat observation) or 'agent_pos' (hand xyz + gripper)")
        base = env.unwrapped
        base.model.vis.quality.shadowsize = 0  # must precede the renderer's creation
        base.model.vis.quality.offsamples = 0
        if camera == "corner2":
            base.model.cam_pos[2] = [0.75, 0.075, 0.7]
        self._flip = camera == "corner2"
        self._flags_off = False
        self._mujoco = mujoco
        self._state_dim = 4 if state == "agent_pos" else env.observation_space.shape[0]
        self.observation_space = gym.spaces.Dict({
            IMAGE_KEY: gym.spaces.Box(0.0, 1.0, shape=(3, image_size, image_size), dtype=np.float32),
            STATE_KEY: gym.spaces.Box(-np.inf, np.inf, shape=(self._state_dim,), dtype=np.float32),
        })

    def render_rgb(self) -> np.ndarray:
        renderer = self.env.unwrapped.mujoco_renderer
        if renderer.viewer is not None:
            # Several envs share the process's GL state: another env's close (an evaluation's) releases the
            # current context and later renders come back black unless this env's own context is made current.
            renderer.viewer.make_context_current()
        image = self.env.render()
        if not self._flags_off:  # the scene exists only after the first render
            flags = self.env.unwrapped.mujoco_renderer._get_viewer("rgb_array").scn.flags
            for flag in ("mjRND_SHADOW", "mjRND_REFLECTION", "mjRND_SKYBOX"):
                flags[getattr(self._mujoco.mjtRndFlag, flag)] = 0
            self._flags_off = True
            image = self.env.render()
        return np.flip(image, (0, 1)) if self._flip else image

    def observation(self, observation):
        self.flat_observation = observation  # scripted experts act on the whole flat state
        image = np.ascontiguousarray(self.render_rgb().transpose(2, 0, 1), dtype=np.float32) / 255.0
        return {IMAGE_KEY: image, STATE_KEY: np.asarray(observation[: self._state_dim], dtype=np.float32)}


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
    observation: str = "state",
    image_size: int = 64,
    camera: str = "corner2",
    state: str = "full",
    task_index: int = 0,
) -> gym.Env:
    """Build one environment with ``info["is_success"]`` and flat float observations, or for
    ``observation="pixels_state"`` (Meta-World only) a rendered image plus the state (:class:`PixelsAndState`).
    For a task set, task ``task_index mod n``; its state observation ends with the task's one-hot."""
    validate_env_id(env_id)
    tasks = task_ids(env_id)
    if len(tasks) > 1:
        index = task_index % len(tasks)
        env = make_env(tasks[index], seed=seed, max_episode_steps=max_episode_steps, reward_mode=reward_mode,
                       terminate_on_success=terminate_on_success, reward_scale=reward_scale, kwargs=kwargs,
                       observation=observation, image_size=image_size, camera=camera, state=state)
        if observation == "state":
            env = TaskOneHot(env, index, len(tasks))
        if chunk_steps is not None:
            env = ActionChunk(env, chunk_steps)
        return env
    kwargs = {"disable_env_checker": True, **(kwargs or {})}
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    if observation not in ("state", "pixels_state"):
        raise ValueError(f"observation={observation!r}: use 'state' or 'pixels_state'")
    if observation == "pixels_state":
        if not env_id.startswith(METAWORLD_PREFIX):
            raise ValueError(f"observation='pixels_state' is implemented for Meta-World envs only, not {env_id!r}")
        kwargs.update(render_mode="rgb_array", camera_name=camera, width=image_size, height=image_size)
    if env_id.startswith(METAWORLD_PREFIX):
        env = gym.make("Meta-World/MT1", env_name=env_id[len(METAWORLD_PREFIX):], seed=seed, **kwargs)
    else:
        env = gym.make(env_id, **kwargs)
    env = SuccessInfo(env, reward_mode, terminate_on_success, reward_scale)
    env = FlattenFloatObservation(env)
    if observation == "pixels_state":
        env = PixelsAndState(env, image_size, camera, state)
    if chunk_steps is not None:
        env = ActionChunk(env, chunk_steps)
    env.action_space.seed(seed)
    return env
