"""The collector: training envs, observation processing and history, acting, transitions, episode statistics.

One ``step`` is one *vectorised chunk step*: every env executes the ``n_action_steps`` actions decoded from the
latent the caller chooses, and the collector returns the replay transition. It never touches a gradient, so on a
robot it can run in its own process beside the learner (latents in, transitions out).
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np
import torch

from vla_steer.adapters.base import Context, LatentLayout
from vla_steer.algorithms.stored_observations import images_stored_as_bytes, observation_fields
from vla_steer.config import Recipe
from vla_steer.envs.registry import ActionChunk, SuccessInfo, make_env, task_description


class NonFiniteError(RuntimeError):
    """An environment produced NaN / inf; raised before the value can reach the replay buffer."""


class MissingInputsError(ValueError):
    """The env does not provide an observation the base policy reads."""


def check_finite(name: str, value, step: int) -> None:
    if isinstance(value, dict):  # dict observations (images, state, task text): every numeric entry
        for key, entry in value.items():
            if np.asarray(entry).dtype.kind in "fiub":
                check_finite(f"{name} {key!r}", entry, step)
        return
    bad = ~np.isfinite(np.asarray(value, dtype=np.float64))
    if bad.any():
        envs = sorted(set(np.nonzero(bad.reshape(bad.shape[0], -1).any(1))[0].tolist()))
        raise NonFiniteError(
            f"{name} from env(s) {envs} is not finite (NaN/inf) at env step {step}; training stopped so the "
            "replay buffer is not poisoned. Check the simulator (unstable physics, bad action scaling) or wrap "
            "the env to sanitise its output."
        )


def with_final_observations(next_obs, info: dict, done: np.ndarray):
    """The true next observation of every env: SAME_STEP autoreset puts a finished episode's last one in
    ``info["final_obs"]`` (per env; a dict per env for dict observation spaces)."""
    if not done.any():
        return next_obs
    finished = np.nonzero(done)[0]
    if isinstance(next_obs, dict):
        stored = {key: np.array(value, copy=True) for key, value in next_obs.items()}
        for i in finished:
            for key in stored:
                stored[key][i] = info["final_obs"][i][key]
        return stored
    stored = next_obs.copy()
    for i in finished:
        stored[i] = info["final_obs"][i]
    return stored


def chunk_discount(gamma: float, chunk_steps: np.ndarray, mode: str) -> np.ndarray:
    """The discount of each chunk transition: ``gamma`` per chunk (``"chunk"``, DSRL's convention), or ``gamma`` per
    executed env step (``"env_step"``: a chunk cut short by the episode's end is discounted for the rows it ran)."""
    chunk_steps = np.asarray(chunk_steps)
    return gamma ** chunk_steps if mode == "env_step" else np.full(len(chunk_steps), gamma)


def step_info(info: dict, done: np.ndarray, key: str) -> np.ndarray:
    """Per-env value of ``key`` from a SAME_STEP-autoreset vector info: finished envs report it in ``final_info``."""
    values = np.zeros(len(done), dtype=np.float64)
    for source, rows in ((info, ~done), (info.get("final_info", {}), done)):
        if key in source:
            present = np.asarray(source.get(f"_{key}", np.ones(len(done), bool)), bool) & rows
            values[present] = np.asarray(source[key], dtype=np.float64)[present]
    return values


def step_arrays(info: dict, done: np.ndarray, key: str) -> list[np.ndarray | None]:
    """Per env, the array ``key`` of a SAME_STEP-autoreset vector info (``None`` where the env did not report it)."""
    values = []
    for i, finished in enumerate(done):
        source = info.get("final_info", {}) if finished else info
        present = key in source and bool(np.asarray(source.get(f"_{key}", np.ones(len(done), bool)))[i])
        values.append(np.asarray(source[key][i]) if present else None)
    return values


def step_frames(info: dict, done: np.ndarray) -> list[list[dict]]:
    """Per env, the executed steps :class:`ActionChunk` listed in ``info["frames"]`` (``keep_frames``)."""
    frames = []
    for i, finished in enumerate(done):
        source = info.get("final_info", {}) if finished else info
        frames.append(list(source["frames"][i]) if "frames" in source else [])
    return frames


def make_vector_env(recipe: Recipe, num_envs: int, seed: int, n_action_steps: int, n_obs_steps: int = 1,
                    keep_frames: bool = False, with_teleop: bool = True) -> gym.vector.VectorEnv:
    """``num_envs`` chunked envs (SAME_STEP autoreset). A LeRobot env (``env.type``) is built by LeRobot's
    ``make_env`` as ``lerobot-eval`` builds it (a robot env by LeRobot's ``make_robot_env``; ``with_teleop=False``
    leaves a simulated one's person out, for evaluation); a built-in one by the registry."""
    e = recipe.env

    def factory(i):
        def make():
            if e.type is not None:
                from vla_steer.envs.lerobot_envs import lerobot_env_config, make_lerobot_env
                from vla_steer.envs.robot_env import ENV_TYPE as ROBOT_ENV_TYPE

                robot = e.type == ROBOT_ENV_TYPE
                lerobot_env = make_lerobot_env(lerobot_env_config(e.type, e.options), e.kwargs if robot else None,
                                               with_teleop, recipe.safety)
                env = SuccessInfo(lerobot_env, e.reward_mode, e.terminate_on_success, e.reward_scale)
            else:
                env = make_env(e.id, seed=seed + i, max_episode_steps=e.max_episode_steps, reward_mode=e.reward_mode,
                               terminate_on_success=e.terminate_on_success, reward_scale=e.reward_scale,
                               kwargs=e.kwargs, task_index=env_task_index(recipe, i), **e.observation_kwargs())
            env.action_space.seed(seed + i)
            return ActionChunk(env, n_action_steps, n_obs_steps, keep_frames)
        return make

    cls = gym.vector.AsyncVectorEnv if e.vectorization == "async" else gym.vector.SyncVectorEnv
    return cls([factory(i) for i in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def env_task_index(recipe: Recipe, i: int) -> int:
    """The task index env ``i`` passes to a task set (``env.id: a+b+c``; ``make_env`` takes it mod n): ``env.only_task``
    if set, else ``i``. ``env.num_envs`` is a multiple of n (``validate_recipe``), so every process covers every task
    equally."""
    return recipe.env.only_task if recipe.env.only_task is not None else i


def make_guard(recipe: Recipe, action_dim: int):
    """The recipe's :class:`vla_steer.robot.safety.SafetyGuard` for env actions of ``action_dim`` dimensions."""
    from vla_steer.robot.safety import SafetyGuard

    s = recipe.safety
    return SafetyGuard(action_dim, recipe.head.bound, s.action_low, s.action_high, s.max_action_step)


class EpisodeTracker:
    """Return, length and success of every env's running episode; finished episodes are appended to ``episodes``."""

    def __init__(self, num_envs: int):
        self.episodes: dict[str, list] = {"return": [], "success": [], "length": []}
        self._return, self._length, self._success = np.zeros(num_envs), np.zeros(num_envs, int), np.zeros(num_envs, bool)

    def update(self, reward, done, chunk_steps, success, active=None) -> np.ndarray:
        """Add one chunk step; returns the indices of envs whose episode ended (and was ``active``)."""
        active = np.ones(len(reward), bool) if active is None else active
        self._return += reward * active
        self._length += chunk_steps * active
        self._success |= success & active
        ended = np.nonzero(done & active)[0]
        for i in ended:
            self.episodes["return"].append(float(self._return[i]))
            self.episodes["success"].append(bool(self._success[i]))
            self.episodes["length"].append(int(self._length[i]))
            self._return[i], self._length[i], self._success[i] = 0.0, 0, False
        return ended


class Collector:
    """Acts in the training envs with a frozen base and whatever latent ``choose_latent(features)`` returns.

    Args:
        recipe: the env section and the discount settings.
        base: the :class:`vla_steer.pipeline.SteeringBase` (adapter, observation and action pipelines).
        layout: latent -> noise.
        seed: seed of env 0 (env i gets ``seed + i``); reset seeds also depend on the iteration (see :meth:`reset`).
        record_to: record every executed step there as a LeRobotDataset through
            :class:`vla_steer.data.recording.RolloutRecorder`, flushed per finished episode (an existing recording there
            is appended to: a resumed run goes on recording where it stopped).
    """

    def __init__(self, recipe: Recipe, base, layout: LatentLayout, seed: int, record_to=None, with_teleop: bool = True,
                 store_observations: bool = False):
        from vla_steer.envs.robot_env import ENV_TYPE as ROBOT_ENV_TYPE

        self.recipe, self.base, self.adapter, self.layout = recipe, base, base.adapter, layout
        self.seed, self.record_to, self.recorder = seed, record_to, None
        self.num_envs = recipe.env.num_envs
        # a robot env (or its simulated stand-in) reports a person's interventions: transitions carry the flag
        self.robot = recipe.env.type == ROBOT_ENV_TYPE
        self.envs = make_vector_env(recipe, self.num_envs, seed, self.adapter.n_action_steps, self.adapter.n_obs_steps,
                                    keep_frames=record_to is not None, with_teleop=with_teleop)
        self.tracker = EpisodeTracker(self.num_envs)
        self.guard = make_guard(recipe, self.envs.single_action_space.shape[-1])
        self.env_steps = 0  # env steps actually executed by this collector
        self.last_ended: np.ndarray = np.zeros(0, int)  # the envs whose episode the last step ended, in tracker order
        self.last_chunk_steps: np.ndarray = np.zeros(self.num_envs, int)  # env steps each env ran in the last step
        self.obs = self.context = None
        # the processed observations go into transitions too, for an action critic that re-encodes them
        self.store_observations = store_observations
        self.image_bytes: set[str] | None = None  # observation keys stored as uint8, decided on the first batch

    # -- observations ------------------------------------------------------------------------------------
    def tasks(self, envs: gym.vector.VectorEnv | None = None) -> list[str]:
        """The task text of every env (LeRobot envs: as ``add_envs_task`` reads it; built-in: the env's instruction)."""
        envs = envs or self.envs
        if self.recipe.env.type is not None:
            from vla_steer.envs.lerobot_envs import task_texts

            return task_texts(envs)
        return [task_description(self.recipe.env.id, env_task_index(self.recipe, i)) for i in range(envs.num_envs)]

    def encode(self, obs, envs: gym.vector.VectorEnv | None = None) -> Context:
        observation = self.base.observations(obs, self.tasks(envs))
        context = self.adapter.encode(observation)
        if self.store_observations:
            context.extras["observation"] = observation
        return context

    def _observation_fields(self, context: Context, prefix: str) -> dict[str, torch.Tensor]:
        observation = context.extras["observation"]
        if self.image_bytes is None:
            self.image_bytes = images_stored_as_bytes(observation)
        return observation_fields(observation, prefix, self.image_bytes)

    def check_inputs(self, obs) -> None:
        """Refuse an env whose processed observation lacks what the base reads, naming the keys and the fix."""
        batch = self.base.observations(obs, self.tasks())
        missing = self.adapter.missing_observation_keys(batch) if isinstance(batch, dict) else []
        if missing:
            given = sorted(key for key in batch if key.startswith("observation."))
            raise MissingInputsError(
                f"the base policy reads {', '.join(missing)}, which the env does not provide (after LeRobot's "
                f"processing and base.rename_map the env gives {', '.join(given) or 'nothing'}). Map an env key to the "
                "policy's with base.rename_map (e.g. base.rename_map: {observation.image: observation.images.top}) or "
                "choose the env's observation type that carries it (e.g. env.obs_type)")

    def reset(self, iteration: int) -> None:
        """Reset every env (seeds depend on the iteration, so a resumed run starts fresh episodes) and encode."""
        self.obs, _ = self.envs.reset(seed=[self.seed + iteration * 100 + i for i in range(self.num_envs)])
        self.check_inputs(self.obs)
        self.context = self.encode(self.obs)

    # -- acting --------------------------------------------------------------------------------------------
    def env_actions(self, context: Context, latent: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """``(normalised executed rows [B, k, A], env actions as numpy)`` for ``latent``."""
        actions = self.adapter.decode(context, self.layout.to_noise(latent))
        return actions, self.base.actions(actions).detach().cpu().numpy()

    def step(self, choose_latent: Callable[[torch.Tensor], torch.Tensor], discount_gamma: float,
             discount_mode: str) -> dict[str, torch.Tensor]:
        """Act once in every env; returns the replay transition (``features``, ``latent``, ``action`` (normalised,
        flattened), ``reward`` (summed over the chunk), ``discount``, ``terminated``, ``next_features``, for
        storable contexts ``decode_state`` / ``next_decode_state``, with ``store_observations`` the processed
        observations (:func:`observation_fields`), and in robot envs ``intervention``: 1 where a
        person's actions replaced rows of the chunk; ``action`` then holds the rows as executed)."""
        context = self.context
        latent = self.guard.latent(choose_latent(context.features),
                                   lambda n: torch.randn(n, self.layout.latent_dim, device=context.features.device))
        actions, env_actions = self.env_actions(context, latent)
        safe = self.guard.actions(env_actions)
        if not np.array_equal(safe, env_actions):  # what is stored is what is sent
            actions = self.base.normalize_actions(torch.as_tensor(safe, device=actions.device)).to(actions.dtype)
            env_actions = safe
        next_obs, reward, terminated, truncated, info = self.envs.step(env_actions)
        check_finite("reward", reward, self.env_steps)
        check_finite("observation", next_obs, self.env_steps)
        done = terminated | truncated
        chunk_steps = step_info(info, done, "chunk_steps").astype(int)
        self.env_steps += int(chunk_steps.sum())

        stored_next = with_final_observations(next_obs, info, done)
        if done.any():
            check_finite("final observation", stored_next, self.env_steps)
        next_context = self.encode(stored_next)
        discount = chunk_discount(discount_gamma, chunk_steps, discount_mode)
        intervened = step_info(info, done, "intervened") > 0 if self.robot else np.zeros(len(done), bool)
        if intervened.any():
            actions = self._executed(actions, step_arrays(info, done, "executed_actions"), intervened)
        transition = {
            "features": context.features, "latent": latent, "action": actions.flatten(1),
            "reward": torch.as_tensor(reward, dtype=torch.float32), "discount": torch.as_tensor(discount, dtype=torch.float32),
            "terminated": torch.as_tensor(terminated, dtype=torch.float32), "next_features": next_context.features,
        }
        if self.robot:
            transition["intervention"] = torch.as_tensor(intervened, dtype=torch.float32)
        if context.storable:
            transition["decode_state"] = context.decode_state
            transition["next_decode_state"] = next_context.decode_state
        if self.store_observations:
            transition |= self._observation_fields(context, "") | self._observation_fields(next_context, "next_")
        ended = self.tracker.update(reward, done, chunk_steps, step_info(info, done, "is_success") > 0)
        self.last_ended, self.last_chunk_steps = ended, chunk_steps
        for i in np.nonzero(done)[0]:
            self.guard.new_episode(int(i))
        if self.record_to is not None:
            self._record(info, done, latent, ended)
        # the context to act from next: reuse the encode unless an episode restarted
        self.obs = next_obs
        self.context = self.encode(next_obs) if done.any() else next_context
        return transition

    def _executed(self, actions: torch.Tensor, executed: list, intervened: np.ndarray) -> torch.Tensor:
        """``actions`` (normalised ``[B, k, A]``) with the chunks a person intervened in replaced by what ran: the
        executed env actions, normalised as the policy normalises its own (rows the person left are re-normalised
        from their own env actions, the identity up to rounding)."""
        actions = actions.clone()
        for i in np.nonzero(intervened)[0]:
            rows = torch.as_tensor(executed[i], dtype=torch.float32, device=actions.device).reshape(actions.shape[1:])
            actions[i] = self.base.normalize_actions(rows).to(actions.dtype)
        return actions

    def _record(self, info: dict, done: np.ndarray, latent: torch.Tensor, ended: np.ndarray) -> None:
        latent = latent.detach().float().cpu().numpy()
        for i, frames in enumerate(step_frames(info, done)):
            rows = [{**self._frame_observation(frame["observation"]), "action": frame["action"], "latent": latent[i],
                     "reward": frame["reward"], "success": frame["success"], "done": frame["terminated"],
                     "chunk_row": row, **({"intervention": frame["intervention"]} if self.robot else {})}
                    for row, frame in enumerate(frames)]
            if self.recorder is None:
                self.recorder = self._open_recorder(rows[0], latent.shape[1])
            self.recorder.add_frames(i, rows)
        for i in ended:
            self.recorder.end_episode(int(i))

    def _frame_observation(self, raw) -> dict[str, np.ndarray]:
        """One env's raw single-frame observation keyed as LeRobot datasets key it."""
        batched = {key: np.asarray(value)[None] for key, value in raw.items()} if isinstance(raw, dict) else np.asarray(raw)[None]
        frames = self.base.observations.frames(batched)
        if isinstance(frames, torch.Tensor):
            frames = {"observation.state": frames}
        return {key: value[0].cpu().numpy() for key, value in frames.items()}

    def _open_recorder(self, frame: dict, latent_dim: int):
        """The recorder, its observation features read off the first frame (images: ``[3, H, W]`` floats)."""
        from pathlib import Path

        from vla_steer.data.recording import RolloutRecorder

        features = {}
        for key, value in frame.items():
            if key.startswith("observation."):
                value = np.asarray(value)
                features[key] = ({"dtype": "image", "shape": (value.shape[1], value.shape[2], value.shape[0])}
                                 if value.ndim == 3 else {"dtype": "float32", "shape": value.shape})
        config = self.base.lerobot_env_config
        root = Path(self.record_to)
        return RolloutRecorder(root, fps=getattr(config, "fps", 30), observation_features=features,
                               action_dim=int(np.asarray(frame["action"]).shape[0]), latent_dim=latent_dim,
                               task=self.tasks()[0], append=root.exists(), interventions=self.robot)

    def close(self) -> None:
        self.envs.close()
        if self.recorder is not None:
            self.recorder.close()
