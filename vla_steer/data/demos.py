"""Demonstrations as LeRobotDataset v3, written through LeRobot's own API and cached by content.

``generate_demonstrations`` rolls a scripted expert (with Gaussian action noise, to make a *mediocre*
base on purpose) and writes observation / ``action`` / ``next.reward`` / ``next.success`` / ``next.done``
frames. The dataset directory is named by a hash of everything that determines its content, written to a
temporary directory first and renamed when complete, so a rerun regenerates nothing and a crash leaves
nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vla_steer.data.experts import make_expert
from vla_steer.envs.registry import IMAGE_KEY, STATE_KEY, make_env, task_description, task_ids
from vla_steer.provenance import package_versions

COMPLETE_MARKER = "vla_steer_complete.json"


SIMULATOR_PACKAGES = ("mujoco", "metaworld", "gymnasium", "gymnasium-robotics", "lerobot")  # what shapes the demos


def demo_cache_key(spec: dict) -> str:
    # format 2: frames carry next.done
    payload = json.dumps({**spec, "versions": package_versions(SIMULATOR_PACKAGES), "format": 2}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def generate_demonstrations(
    env_id: str,
    *,
    num_episodes: int,
    action_noise: float,
    seed: int,
    max_episode_steps: int | None,
    cache_dir: str | Path,
    only_successful: bool = False,
    env_kwargs: dict | None = None,
    observation_kwargs: dict | None = None,
    fps: int = 30,
    show_progress: bool = True,
    experts_dir: str | Path | None = None,
) -> Path:
    """Roll out the scripted expert and write a LeRobotDataset; returns its root (cached).

    With ``observation_kwargs={"observation": "pixels_state", ...}`` the frames also hold the rendered camera
    (``observation.image``, stored as PNG frames) and the task text is the env's language instruction.
    """
    observation_kwargs = observation_kwargs or {"observation": "state"}
    pixels = observation_kwargs["observation"] == "pixels_state"
    spec = dict(env_id=env_id, num_episodes=num_episodes, action_noise=action_noise, seed=seed,
                max_episode_steps=max_episode_steps, only_successful=only_successful, env_kwargs=env_kwargs or {})
    if pixels:  # keeps the cache keys of state-only datasets unchanged
        spec["observation"] = observation_kwargs
    root = Path(cache_dir) / f"{env_id.replace('/', '_')}-{demo_cache_key(spec)}"
    if (root / COMPLETE_MARKER).is_file():
        return root
    tasks = task_ids(env_id)  # a task set records its tasks in turn, each episode with its own task text
    envs = [make_env(env_id, seed=seed, max_episode_steps=max_episode_steps, kwargs=env_kwargs, task_index=k,
                     **observation_kwargs) for k in range(len(tasks))]
    env = envs[0]
    state_space = env.observation_space[STATE_KEY] if pixels else env.observation_space
    features = {"observation.state": {"dtype": "float32", "shape": (state_space.shape[0],), "names": None}}
    if pixels:
        _, height, width = env.observation_space[IMAGE_KEY].shape
        features[IMAGE_KEY] = {"dtype": "image", "shape": (height, width, 3), "names": ["height", "width", "channels"]}

    def frame_of(obs) -> dict:
        if not pixels:
            return {STATE_KEY: obs.astype(np.float32)}
        return {STATE_KEY: obs[STATE_KEY], IMAGE_KEY: (obs[IMAGE_KEY].transpose(1, 2, 0) * 255).round().astype(np.uint8)}

    def source(k: int):
        # trained experts (PPO) are cached beside the demonstrations unless the caller names a directory
        expert = make_expert(tasks[k], experts_dir or Path(cache_dir).expanduser().parent / "experts", show_progress)
        task_env, one_hot = envs[k], len(tasks) if len(tasks) > 1 else 0  # the expert reads the task's own state
        act = lambda obs: expert(task_env.flat_observation if pixels else obs[: len(obs) - one_hot], task_env)  # noqa: E731
        return task_env, act, task_description(tasks[k]) if pixels else tasks[k]

    try:
        sources = [source(k) for k in range(len(tasks))]
    except BaseException:
        for env in envs:
            env.close()
        raise
    return _record(root, spec, sources, features, frame_of, num_episodes=num_episodes,
                   action_noise=action_noise, seed=seed, only_successful=only_successful, fps=fps,
                   show_progress=show_progress, desc=f"demos {env_id}")


def generate_lerobot_env_demonstrations(
    env_config, *, num_episodes: int, action_noise: float, seed: int, cache_dir: str | Path,
    only_successful: bool = False, show_progress: bool = True,
) -> Path:
    """Scripted demonstrations on :class:`vla_steer.envs.lerobot_metaworld.FastMetaWorldEnvConfig`, written with
    the keys LeRobot's env processing gives a policy (``observation.state``, ``observation.environment_state`` or
    ``observation.image``), so ``lerobot-train`` can train on them and ``lerobot-eval`` evaluate on the same env."""
    from dataclasses import asdict

    from vla_steer.envs.lerobot_metaworld import MetaWorldLeRobotEnv

    spec = dict(env_type=env_config.type, env=asdict(env_config) | {"features": None}, num_episodes=num_episodes,
                action_noise=action_noise, seed=seed, only_successful=only_successful,
                env_seeding="per_reset")  # start states follow each reset's seed (they did not before this key)
    root = Path(cache_dir) / f"{env_config.type}_{env_config.task}-{demo_cache_key(spec)}"
    env = MetaWorldLeRobotEnv(**env_config.gym_kwargs, seed=seed)
    features = {}
    for raw_key, feature in env_config.features.items():
        if raw_key == "action":
            continue
        key = env_config.features_map[raw_key]
        if raw_key == "pixels":
            features[key] = {"dtype": "image", "shape": feature.shape, "names": ["height", "width", "channels"]}
        else:
            features[key] = {"dtype": "float32", "shape": feature.shape, "names": None}
    to_key = {raw: env_config.features_map[raw] for raw in env_config.features if raw != "action"}
    expert = make_expert("metaworld/" + env_config.task)
    return _record(root, spec, [(env, lambda obs: expert(env.flat_observation, env), env.task_description)], features,
                   lambda obs: {to_key[k]: v for k, v in obs.items()},
                   num_episodes=num_episodes, action_noise=action_noise, seed=seed, only_successful=only_successful,
                   fps=env_config.fps, show_progress=show_progress, desc=f"demos {env_config.type}/{env_config.task}")


def generate_gym_hil_demonstrations(
    env_config, kwargs: dict, *, num_episodes: int, action_noise: float, seed: int, cache_dir: str | Path,
    only_successful: bool = False, show_progress: bool = True,
) -> Path:
    """Scripted demonstrations in LeRobot's robot env on gym_hil (``env.type: gym_manipulator``, ``name: gym_hil``,
    ``task: PandaPickCube-v0``), recorded with the keys LeRobot's processors give a policy, for ``lerobot-train``."""
    from dataclasses import asdict

    from vla_steer.data.experts import gym_hil_pick_expert
    from vla_steer.envs.robot_env import LeRobotRobotEnv

    if env_config.name != "gym_hil" or env_config.task != "PandaPickCube-v0":
        raise ValueError("scripted demonstrations exist for env.name 'gym_hil' with task 'PandaPickCube-v0'; on a robot "
                         "record them with lerobot-record (or lerobot's gym_manipulator record mode) and set demos.dataset")
    config = asdict(env_config) | {"features": None, "teleop": None}
    spec = dict(env_type="gym_manipulator", env=config, kwargs=kwargs, num_episodes=num_episodes,
                action_noise=action_noise, seed=seed, only_successful=only_successful,
                expert="gym_hil_pick_expert/smooth")  # a changed expert must not reuse cached demonstrations
    root = Path(cache_dir) / f"gym_hil_{env_config.task}-{demo_cache_key(spec)}"
    env = LeRobotRobotEnv(env_config, kwargs, with_teleop=False)
    features = {key: {"dtype": "float32", "shape": space.shape, "names": None}
                for key, space in env.observation_space.spaces.items()}
    expert = gym_hil_pick_expert()
    return _record(root, spec, [(env, expert, env.task)], features, lambda obs: dict(obs), num_episodes=num_episodes,
                   action_noise=action_noise, seed=seed, only_successful=only_successful, fps=env_config.fps,
                   show_progress=show_progress, desc=f"demos gym_hil/{env_config.task}")


def _record(root: Path, spec: dict, sources: list, features: dict, frame_of, *, num_episodes: int,
            action_noise: float, seed: int, only_successful: bool, fps: int, show_progress: bool, desc: str) -> Path:
    """Roll each source's expert with Gaussian action noise in its env and write the episodes to ``root`` atomically
    (a ``.partial`` directory renamed when complete); returns ``root``. ``sources``: ``(env, expert_action(obs),
    task text)``, used in turn, one episode each (a task set's tasks); ``frame_of(obs)`` gives a frame's observation
    entries, keyed as in ``features``."""
    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    datasets.disable_progress_bars()  # one bar per episode from LeRobot's stats otherwise
    envs = [env for env, _, _ in sources]
    if (root / COMPLETE_MARKER).is_file():
        for env in envs:
            env.close()
        return root
    tmp_root = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp_root, ignore_errors=True)
    tmp_root.parent.mkdir(parents=True, exist_ok=True)
    act_dim = envs[0].action_space.shape[0]
    features = {**features,
                "action": {"dtype": "float32", "shape": (act_dim,), "names": None},
                "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
                "next.success": {"dtype": "bool", "shape": (1,), "names": None},
                "next.done": {"dtype": "bool", "shape": (1,), "names": None}}
    rng = np.random.default_rng(seed)
    low, high = envs[0].action_space.low, envs[0].action_space.high
    kept, attempts, successes = 0, 0, 0
    progress = tqdm(total=num_episodes, desc=desc, disable=not show_progress)
    try:
        dataset = LeRobotDataset.create(repo_id=f"vla_steer/{root.name}", fps=fps, features=features,
                                        root=tmp_root, use_videos=False)
        while kept < num_episodes:
            if attempts >= 20 * num_episodes:
                raise RuntimeError(f"the expert succeeded in only {successes}/{attempts} episodes; "
                                   "lower demos.action_noise or set demos.only_successful: false")
            env, expert_action, task = sources[kept % len(sources)]  # a task set: its tasks in turn
            obs, _ = env.reset(seed=seed + attempts)
            attempts += 1
            frames, success, done = [], False, False
            while not done:
                action = expert_action(obs)
                action = np.clip(action + action_noise * rng.standard_normal(act_dim), low, high).astype(np.float32)
                next_obs, reward, terminated, truncated, info = env.step(action)
                success = success or info["is_success"]
                frames.append({**frame_of(obs), "action": action, "next.reward": np.array([reward], np.float32),
                               "next.success": np.array([info["is_success"]], bool),
                               "next.done": np.array([terminated], bool)})
                obs, done = next_obs, terminated or truncated
            successes += success
            if only_successful and not success:
                continue
            for frame in frames:
                dataset.add_frame({**frame, "task": task})
            dataset.save_episode()
            kept += 1
            progress.update(1)
        dataset.finalize()
    except BaseException:
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise
    finally:
        progress.close()
        for env in envs:
            env.close()
    (tmp_root / COMPLETE_MARKER).write_text(json.dumps(
        {**spec, "versions": package_versions(SIMULATOR_PACKAGES), "expert_success_rate": successes / attempts, "episodes": kept}, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    tmp_root.rename(root)
    return root


@dataclass
class DemoArrays:
    observations: torch.Tensor  # [N, obs_dim]
    actions: torch.Tensor  # [N, action_dim]
    episode_index: torch.Tensor  # [N]

    def action_chunks(self, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets ``[N, horizon, A]`` starting at every frame, and a pad mask for steps past the episode end
        (padded with the episode's last action, as LeRobot does)."""
        n = self.actions.shape[0]
        idx = torch.arange(n)[:, None] + torch.arange(horizon)[None]  # [N, H]
        idx_clamped = idx.clamp(max=n - 1)
        same_episode = self.episode_index[idx_clamped] == self.episode_index[:, None]
        pad = ~same_episode | (idx >= n)
        # last frame of each row's episode
        last = torch.zeros(n, dtype=torch.long)
        ends = torch.nonzero(torch.diff(self.episode_index, append=self.episode_index[-1:] + 1)).squeeze(-1)
        starts = torch.cat([torch.zeros(1, dtype=torch.long), ends[:-1] + 1])
        for s, e in zip(starts.tolist(), ends.tolist()):
            last[s:e + 1] = e
        idx_final = torch.where(pad, last[:, None].expand(-1, horizon), idx_clamped)
        return self.actions[idx_final], pad


def load_demonstrations(root: str | Path) -> DemoArrays:
    """Read a LeRobotDataset (v3, local) into memory as tensors, through LeRobot's loader."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"{root} is not a LeRobotDataset (no meta/info.json)")
    dataset = LeRobotDataset(repo_id=f"local/{root.name}", root=root)
    missing = {"observation.state", "action"} - set(dataset.features)
    if missing:
        raise ValueError(f"dataset {root} lacks features {sorted(missing)}; it has {sorted(dataset.features)}")
    table = dataset.hf_dataset.with_format("torch")
    return DemoArrays(
        observations=torch.stack(list(table["observation.state"])).float(),
        actions=torch.stack(list(table["action"])).float(),
        episode_index=torch.as_tensor(table["episode_index"]).long(),
    )
