"""Recipe -> artefacts: demonstrations, a BC base policy, the steerable base. Cached steps are keyed by content."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import gymnasium as gym
from accelerate import Accelerator

from vla_steer.adapters import NativePolicyAdapter, SteerableAdapter
from vla_steer.adapters.base import LatentLayout
from vla_steer.config import Recipe, RecipeError
from vla_steer.data.demos import generate_demonstrations
from vla_steer.envs.registry import STATE_KEY, make_env
from vla_steer.policies import ChunkPolicyConfig, load_chunk_policy
from vla_steer.policies.bc import train_bc
from vla_steer.hub.format import is_hub_repo_id
from vla_steer.policies.smolvla_bc import TinySmolVLASpec, ensure_tiny_vlm, train_smolvla_bc
from vla_steer.envs.processing import ActionPipeline, ObservationPipeline


def cache_dir(recipe: Recipe) -> Path:
    return Path(recipe.train.cache_dir).expanduser()


def recipe_layout(recipe: Recipe, adapter: SteerableAdapter) -> LatentLayout:
    """The latent layout the recipe's head section names, for this base's noise; a layout that does not fit the base
    (more control rows than the chunk, more steered dims than the noise has) is a recipe error."""
    try:
        return LatentLayout.from_head(recipe.head, adapter.noise_shape)
    except ValueError as exc:
        raise RecipeError(f"{exc} (this base's noise is {list(adapter.noise_shape)}: chunk x action dims)") from None


def ensure_demos(recipe: Recipe, show_progress: bool = True) -> Path:
    if recipe.demos.dataset:
        root = Path(recipe.demos.dataset).expanduser()
        if not (root / "meta" / "info.json").is_file():
            raise FileNotFoundError(f"demos.dataset={str(root)!r} is not a LeRobotDataset (no meta/info.json)")
        return root
    d = recipe.demos
    if recipe.env.type is not None:
        from vla_steer.data.demos import generate_lerobot_env_demonstrations
        from vla_steer.envs.lerobot_envs import lerobot_env_config
        from vla_steer.envs.lerobot_metaworld import ENV_TYPE
        from vla_steer.envs.robot_env import ENV_TYPE as ROBOT_ENV_TYPE

        if recipe.env.type == ROBOT_ENV_TYPE:
            from vla_steer.data.demos import generate_gym_hil_demonstrations

            return generate_gym_hil_demonstrations(
                lerobot_env_config(recipe.env.type, recipe.env.options), recipe.env.kwargs, num_episodes=d.num_episodes,
                action_noise=d.action_noise, seed=d.seed, cache_dir=cache_dir(recipe) / "demos",
                only_successful=d.only_successful, show_progress=show_progress)
        if recipe.env.type != ENV_TYPE:
            raise ValueError(f"scripted demonstrations exist for env.type {ENV_TYPE!r} (and built-in env ids), not "
                             f"{recipe.env.type!r}: record your own, or set demos.dataset to a LeRobotDataset")
        return generate_lerobot_env_demonstrations(
            lerobot_env_config(recipe.env.type, recipe.env.options), num_episodes=d.num_episodes,
            action_noise=d.action_noise, seed=d.seed, cache_dir=cache_dir(recipe) / "demos",
            only_successful=d.only_successful, show_progress=show_progress)
    return generate_demonstrations(
        recipe.env.id, num_episodes=d.num_episodes, action_noise=d.action_noise, seed=d.seed,
        max_episode_steps=d.max_episode_steps or recipe.env.max_episode_steps, cache_dir=cache_dir(recipe) / "demos",
        only_successful=d.only_successful, env_kwargs=recipe.env.kwargs,
        observation_kwargs=recipe.env.observation_kwargs(), show_progress=show_progress,
        experts_dir=cache_dir(recipe) / "experts",
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


@dataclass
class SteeringBase:
    """A frozen base ready to steer: its adapter and the processing around it (see ``vla_steer/envs/processing.py``).

    ``source`` / ``revision``: where the base came from (a directory or a Hub repo id); ``directory``: its files on disk
    (``None`` for a base given as an object); ``policy_config``: a LeRobot base's config (``None`` for built-ins).
    """

    adapter: SteerableAdapter
    observations: ObservationPipeline
    actions: ActionPipeline
    source: str | None = None
    revision: str | None = None
    directory: Path | None = None
    policy_config: Any = None
    lerobot_env_config: Any = None

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Env-space actions (a dataset's) -> the space the adapter decodes into and the replay buffer keeps: the
        policy's own action normalisation for LeRobot bases, the identity for built-in ones."""
        from lerobot.processor import NormalizerProcessorStep
        from lerobot.utils.constants import ACTION

        steps = getattr(self.observations.preprocessor, "steps", None) or []
        normalizer = next((step for step in steps if isinstance(step, NormalizerProcessorStep)), None)
        if normalizer is None or ACTION not in normalizer.features:
            return actions
        return normalizer._normalize_action(actions.to(self.adapter.device), inverse=False)


def is_builtin_base(directory: Path) -> bool:
    """A directory of this project's MLP chunk policies (its config.json has ``obs_dim``), not a LeRobot checkpoint."""
    try:
        return "obs_dim" in json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False


def base_directory(recipe: Recipe) -> Path:
    """The files of ``base.path``: a local directory, or a Hub repo's snapshot at ``base.revision`` (its config,
    weights and processor files only; honours ``HF_HUB_OFFLINE``)."""
    from vla_steer.hub.api import BASE_PATTERNS, resolve_repo

    return resolve_repo(recipe.base.path, revision=recipe.base.revision, patterns=BASE_PATTERNS)


def load_lerobot_policy(directory: Path, device, rename_map: dict | None = None):
    """``(policy, preprocessor, postprocessor)`` of a LeRobot checkpoint, loaded as ``lerobot-eval`` loads it (the type
    from its config.json, its saved processors with the device and ``rename_map`` overridden). Processor files are
    checked first: steps given by class path (which LeRobot would import) are refused."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    from vla_steer.adapters.lerobot import LEROBOT_ADAPTERS
    from vla_steer.hub.format import PROCESSOR_CONFIG_NAMES, check_processor_config

    if not (directory / "config.json").is_file():
        nested = sorted(str(p.parent) for p in directory.glob("**/pretrained_model/config.json"))
        hint = f" Did you mean {nested[-1]}?" if nested else ""
        raise FileNotFoundError(f"base.path {str(directory)!r} has no config.json: point it at a checkpoint's "
                                f"pretrained_model directory (lerobot-train writes checkpoints/<step>/pretrained_model).{hint}")
    raw_type = json.loads((directory / "config.json").read_text()).get("type")
    if raw_type not in LEROBOT_ADAPTERS:
        raise ValueError(f"base.path {str(directory)!r} holds a LeRobot {raw_type!r} policy, which no adapter steers; "
                         f"supported types: {', '.join(sorted(LEROBOT_ADAPTERS))}")
    missing = [name for name in PROCESSOR_CONFIG_NAMES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"base.path {str(directory)!r} lacks {', '.join(missing)}: steer a checkpoint saved by "
                                "lerobot-train (its checkpoints/<step>/pretrained_model directory), which carries them")
    for name in PROCESSOR_CONFIG_NAMES:
        check_processor_config(directory / name)
    device = torch.device(device)
    device = "cpu" if device.type == "cpu" else str(device)  # DDP on CPU gives cpu:0, which safetensors refuses
    config = PreTrainedConfig.from_pretrained(directory)
    config.device = device
    policy = get_policy_class(config.type).from_pretrained(directory, config=config)
    policy.to(device)
    preprocessor, postprocessor = make_pre_post_processors(
        config, pretrained_path=str(directory),
        preprocessor_overrides={"device_processor": {"device": device},
                                "rename_observations_processor": {"rename_map": dict(rename_map or {})}})
    return policy, preprocessor, postprocessor


def build_base(recipe: Recipe, accelerator: Accelerator | None = None, show_progress: bool = True) -> SteeringBase:
    """The recipe's base (a LeRobot checkpoint, a built-in directory, or one behaviour-cloned here) with its adapter
    and processing. (The trainer's collector then checks, before any rollout, that the env gives the base its
    inputs.)"""
    accelerator = accelerator or Accelerator(cpu=True)
    device, b, e = accelerator.device, recipe.base, recipe.env
    if b.path and not Path(b.path).expanduser().is_dir() and not is_hub_repo_id(b.path):
        raise FileNotFoundError(f"base.path {b.path!r} is neither a directory nor a Hub repo id (org/name)")
    directory = base_directory(recipe) if b.path else ensure_base(recipe, accelerator, show_progress)
    source = b.path or str(directory)
    if is_builtin_base(directory):
        if e.type is not None:
            raise ValueError("a built-in base reads the flat state of a built-in env: use env.id with it, not env.type")
        policy = load_chunk_policy(directory, device=device)
        obs_dim, action_dim = env_dims(recipe)
        if (policy.config.obs_dim, policy.config.action_dim) != (obs_dim, action_dim):
            raise ValueError(f"base policy expects obs_dim={policy.config.obs_dim}, action_dim={policy.config.action_dim} "
                             f"but {e.id} has obs_dim={obs_dim}, action_dim={action_dim}")
        return SteeringBase(NativePolicyAdapter(policy), ObservationPipeline(device), ActionPipeline(), source,
                            b.revision, directory)

    policy, preprocessor, postprocessor = load_lerobot_policy(directory, device, b.rename_map)
    return lerobot_steering_base(recipe, policy, preprocessor, postprocessor, source=source, directory=directory)


def lerobot_steering_base(recipe: Recipe, policy, preprocessor, postprocessor, *, source: str | None = None,
                          directory: Path | None = None) -> SteeringBase:
    """A loaded LeRobot policy and its processors as a :class:`SteeringBase` for ``recipe``'s env: the adapter (with
    ``base.adapter_kwargs``), LeRobot's env processors for a LeRobot env, the observation history of the policy."""
    from vla_steer.adapters.lerobot import adapter_for_lerobot_policy

    b, e = recipe.base, recipe.env
    try:
        adapter = adapter_for_lerobot_policy(policy, **b.adapter_kwargs)
    except TypeError as exc:
        raise ValueError(f"base.adapter_kwargs {b.adapter_kwargs} do not fit the {policy.config.type} adapter: {exc}") from None
    env_config = env_preprocessor = env_postprocessor = None
    if e.type is not None:
        from lerobot.envs.factory import make_env_pre_post_processors

        from vla_steer.envs.lerobot_envs import lerobot_env_config

        env_config = lerobot_env_config(e.type, e.options)
        env_preprocessor, env_postprocessor = make_env_pre_post_processors(env_config, policy.config)
    observations = ObservationPipeline(adapter.device, lerobot_env=e.type is not None, preprocessor=preprocessor,
                                       env_preprocessor=env_preprocessor, n_obs_steps=adapter.n_obs_steps)
    return SteeringBase(adapter, observations, ActionPipeline(postprocessor, env_postprocessor), source, b.revision,
                        directory, policy.config, env_config)
