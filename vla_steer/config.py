"""Recipes: YAML files parsed into typed dataclasses, with errors that name the bad field.

A recipe has the sections ``env``, ``demos``, ``base``, ``head``, ``algorithm`` and ``train``. Any field can
be overridden from the command line as ``section.field=value`` (the value is parsed as YAML).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from vla_steer.fields import bounded, range_problems

# The ``algorithm`` section: one dataclass per method (vla_steer/algorithms/configs.py, a light module: no torch),
# picked by ``algorithm.name``. AlgorithmConfig is their common base; the method classes are re-exported here.
from vla_steer.algorithms.configs import (ALGORITHM_CONFIGS, DEFAULT_ALGORITHM, LEGACY_FLAT_FIELDS,  # noqa: F401
                                          AlgorithmConfig, DSRLNAConfig, DSRLSACConfig, LPDSConfig, algorithm_config,
                                          field_names, owners_of)


class RecipeError(ValueError):
    """A recipe (or an override) is malformed; the message names the field and what is allowed."""


@dataclass
class EnvConfig:
    # Where the env comes from: ``id`` (the built-in registry: ``metaworld/<task>-v3`` or any gymnasium id) or
    # ``type`` (a LeRobot ``EnvConfig`` type: ``pusht``, ``aloha``, ``libero``, ``metaworld``,
    # ``vla_steer_meta_world`` ...), built through LeRobot's ``make_env`` and fed to the policy through LeRobot's
    # observation processing, as ``lerobot-eval`` does. With ``type``, the LeRobot config's own fields (``task``,
    # ``obs_type``, ``episode_length`` ...) are written beside it in the recipe; they end up in ``options``.
    id: Optional[str] = "metaworld/push-v3"
    type: Optional[str] = None
    options: dict = field(default_factory=dict)
    num_envs: int = bounded(4, ge=1, le=1024)
    vectorization: Literal["sync", "async"] = "sync"  # async only pays off for slow envs (robosuite)
    max_episode_steps: Optional[int] = bounded(None, ge=1)
    reward_mode: Literal["env", "sparse", "dense_minus_one"] = "env"
    reward_scale: float = bounded(1.0, gt=0)  # dense_minus_one: reward / reward_scale - 1
    terminate_on_success: bool = False
    kwargs: dict = field(default_factory=dict)
    # "pixels_state" (Meta-World): {"observation.image": rendered camera, "observation.state": ...}
    observation: Literal["state", "pixels_state"] = "state"
    image_size: int = bounded(64, ge=8, le=1024)  # square render size for pixels_state
    camera: str = "corner2"
    state: Literal["full", "agent_pos"] = "full"  # pixels_state: whole flat obs, or hand xyz + gripper only
    # a task set (id "metaworld/reach-v3+push-v3+..."): env i runs task i mod n, unless only_task names one for all
    only_task: Optional[int] = bounded(None, ge=0, le=1024)

    def observation_kwargs(self) -> dict:
        """The :func:`vla_steer.envs.registry.make_env` arguments that shape the observation."""
        return dict(observation=self.observation, image_size=self.image_size, camera=self.camera, state=self.state)


@dataclass
class DemosConfig:
    dataset: Optional[str] = None  # an existing LeRobotDataset root; if set, nothing is generated
    num_episodes: int = bounded(10, ge=1)
    action_noise: float = bounded(0.3, ge=0)  # std of Gaussian noise on expert actions: a mediocre base on purpose
    max_episode_steps: Optional[int] = bounded(None, ge=1)  # defaults to env.max_episode_steps
    only_successful: bool = False
    seed: int = bounded(0, ge=0)


@dataclass
class BaseConfig:
    # A trained base; if set, no BC: a LeRobot checkpoint (a ``pretrained_model`` directory written by
    # ``lerobot-train``, or a Hub repo id at ``revision``; its type comes from its config.json and its saved
    # processors are used), or a directory of this project's built-in policies.
    path: Optional[str] = None
    revision: Optional[str] = None  # Hub revision (a commit, to pin it) when path is a repo id
    rename_map: dict = field(default_factory=dict)  # env observation key -> policy key (lerobot-eval's --rename_map)
    # Options of the LeRobot adapter: pooling (VLAs: mean | last | mean+last), num_inference_steps (diffusion: DDIM
    # steps; unset keeps the checkpoint's), num_steps (flow VLAs: Euler steps) ...
    adapter_kwargs: dict = field(default_factory=dict)
    # Without path, a base is behaviour-cloned here (the embedded defaults):
    # diffusion / flow: the built-in MLP chunk policies. smolvla: LeRobot's SmolVLAPolicy at toy scale on a
    # local random-init SmolVLM (needs env.observation: pixels_state); hidden_dim / num_layers are the VLM's
    # width / depth, horizon the chunk size, num_inference_steps the Euler steps.
    type: Literal["diffusion", "flow", "smolvla"] = "diffusion"
    horizon: int = bounded(4, ge=1, le=4096)
    n_action_steps: int = bounded(4, ge=1, le=4096)
    hidden_dim: int = bounded(256, ge=1, le=65536)
    num_layers: int = bounded(3, ge=1, le=64)
    num_train_timesteps: int = bounded(100, ge=1, le=100_000)
    num_inference_steps: int = bounded(10, ge=1, le=100_000)
    bc_steps: int = bounded(3000, ge=1)
    bc_batch_size: int = bounded(256, ge=1)
    bc_lr: float = bounded(3e-4, gt=0, le=1)
    seed: int = bounded(0, ge=0)


@dataclass
class HeadConfig:
    latent_layout: Literal["full", "tiled", "interpolated"] = "full"  # vla_steer.adapters.base.LatentLayout
    latent_rows: Optional[int] = bounded(None, ge=1, le=4096)  # control rows of 'interpolated' (K)
    steered_dims: Optional[int] = bounded(None, ge=1, le=4096)  # steer only the first N action dims (pi0 pads to 32); None = all
    bound: float = bounded(1.5, gt=0)  # latents live in [-bound, bound] for every method
    hidden_dim: int = bounded(256, ge=1, le=65536)
    num_layers: int = bounded(3, ge=1, le=64)
    encoder_dim: Optional[int] = bounded(None, ge=1, le=65536)  # bottleneck for large features (VLM embeddings); None = raw
    num_critics: int = bounded(2, ge=1, le=16)


@dataclass
class TrainConfig:
    total_env_steps: int = bounded(100_000, ge=1)
    warmup_env_steps: int = bounded(5_000, ge=0)  # prior-noise rollouts before the first update
    buffer_size: int = bounded(1_000_000, ge=1)
    eval_every: int = bounded(10_000, ge=1)
    eval_episodes: int = bounded(50, ge=1)
    eval_num_envs: int = bounded(10, ge=1, le=1024)
    eval_deterministic: bool = False  # SAC: tanh(mean) latent; LP-DS: Delta(s) with eps = 0
    eval_seed: int = bounded(1_000_000, ge=0)  # env seed of the first evaluation env (env i: eval_seed + i); keep tuning seeds apart
    eval_best_of_k: int = bounded(1, ge=1, le=1024)  # > 1: the critic picks the best of K head proposals per observation (one shared encode)
    entropy_states: int = bounded(32, ge=1)  # states for the k-NN action entropy at each evaluation
    entropy_draws: int = bounded(64, ge=4)  # the k-NN estimator (k = 3) needs more than 3 draws
    checkpoint_every: int = bounded(10_000, ge=1)
    log_every: int = bounded(1_000, ge=1)  # env steps per "update" record in metrics.jsonl: the window's mean update metrics
    seed: int = bounded(0, ge=0)
    output_dir: str = "runs/default"
    resume: bool = True  # resume from output_dir/checkpoints/last if it exists
    mixed_precision: Literal["no", "bf16"] = "no"  # bf16 autocast on GPU; fp16 would need loss scaling
    cuda_graph_updates: bool = True  # one CUDA process: capture the update once and replay it (small MLPs are launch-bound)
    log_with: list = field(default_factory=list)  # accelerate trackers, e.g. ["tensorboard"] or ["wandb"]
    torch_threads: Optional[int] = bounded(None, ge=1, le=1024)
    cache_dir: str = "~/.cache/vla_steer"
    show_progress: bool = True
    record_rollouts: bool = False  # write every training episode to <output_dir>/rollouts as a LeRobotDataset
    publish_every: int = bounded(50, ge=1)  # actor / learner processes: updates between two heads published to the actor


@dataclass
class OfflineConfig:
    """Offline data for the action critic (``dsrl_na``, ``lpds`` with ``critic: action``): a LeRobotDataset with
    ``next.reward`` and ``next.done`` (the recipe's demonstrations, or rollouts recorded with train.record_rollouts)."""

    dataset: Optional[str] = None  # "demos" (the recipe's demonstrations) or a LeRobotDataset root
    fraction: float = bounded(0.25, ge=0, le=1)  # share of every update batch drawn from the offline data once online data exists
    pretrain_updates: int = bounded(0, ge=0)  # critic-only updates on the offline data before the first rollout


@dataclass
class SafetyConfig:
    """Limits the acting loop enforces on whatever the head outputs (``vla_steer/robot/safety.py``), in the env's
    action space. Latents are always checked (non-finite -> the base's prior draw) and clipped to ``head.bound``."""

    action_low: Optional[Union[float, list]] = None  # per action dimension (or one number for all); null = none
    action_high: Optional[Union[float, list]] = None
    max_action_step: Optional[Union[float, list]] = None  # largest change of a dimension between two control steps
    control_period_s: Optional[float] = bounded(None, gt=0)  # robot envs: the watchdog's deadline per control step
    watchdog_misses: int = bounded(3, ge=1, le=1000)  # consecutive missed deadlines that stop the robot
    pace_to_fps: Optional[bool] = None  # robot envs: wait out 1/env.fps between actions (null: real robots yes, gym_hil no)


@dataclass
class Recipe:
    name: str = "unnamed"
    env: EnvConfig = field(default_factory=EnvConfig)
    demos: DemosConfig = field(default_factory=DemosConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    algorithm: AlgorithmConfig = field(default_factory=ALGORITHM_CONFIGS[DEFAULT_ALGORITHM])
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------------
# parsing


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise RecipeError(f"{where}: {value!r} is not allowed; expected {_describe(tp)}")
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except RecipeError:
                continue
        raise RecipeError(f"{where}: {value!r} is not allowed; expected {_describe(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise RecipeError(f"{where}: expected null, got {value!r}")
    if tp is AlgorithmConfig:
        return _algorithm_from_dict(value, where)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp in (dict, list) or typing.get_origin(tp) in (dict, list):
        if isinstance(value, typing.get_origin(tp) or tp):
            return value
    raise RecipeError(f"{where}: expected {_describe(tp)}, got {type(value).__name__} {value!r}")


def _from_dict(cls, data: Any, where: str, kind: str | None = None):
    """``cls`` from a mapping, every value coerced to its field's type. ``kind``: whose fields these are, named
    when a field is unknown (the algorithm's name for the ``algorithm`` section)."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where or 'recipe'}: expected a mapping of fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            if kind is None:
                raise RecipeError(f"unknown field {path!r}.{hint} Allowed fields here: {', '.join(names)}")
            owners = [name for name in owners_of(str(key)) if name != kind]
            owned = f" (a field of {' and '.join(owners)})" if owners else ""
            raise RecipeError(f"unknown field {path!r} for {kind}{owned}.{hint} Allowed fields for {kind}: "
                              f"{', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    config = cls(**kwargs)
    problems = range_problems(config, where) if where else []
    if problems:
        raise RecipeError("; ".join(problems))
    return config


def _algorithm_from_dict(data: Any, where: str) -> AlgorithmConfig:
    """The ``algorithm`` section: the config class of ``name`` (default lpds), with that method's fields only."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    name = data.get("name", DEFAULT_ALGORITHM)
    if not isinstance(name, str) or name not in ALGORITHM_CONFIGS:
        raise RecipeError(f"{where}.name: {name!r} is not allowed; expected one of "
                          + ", ".join(repr(n) for n in ALGORITHM_CONFIGS))
    cls = ALGORITHM_CONFIGS[name]
    if set(data) == LEGACY_FLAT_FIELDS:  # a recipe.json saved before per-algorithm configs: every method's fields
        data = {key: value for key, value in data.items() if key in field_names(cls)}
    return _from_dict(cls, data, where, kind=name)


def _set_path(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml(text: str):
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass: plain data only)


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} must look like section.field=value, e.g. train.seed=1")
        key, raw = item.split("=", 1)
        try:
            value = _yaml(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise RecipeError(f"override {item!r}: the value is not plain YAML data ({exc.problem or exc})") from None
        parsed.append((key.strip(), value))
    return parsed


def _gather_lerobot_env_fields(data: dict) -> None:
    """With ``env.type`` (a LeRobot env), the fields that are not ours are the LeRobot config's: move them to
    ``env.options`` (checked against that config in :func:`validate_recipe`)."""
    env = data.get("env")
    if not isinstance(env, dict) or env.get("type") is None:
        return
    if env.get("id") is not None:
        raise RecipeError("env: give env.id (a built-in or gymnasium env) or env.type (a LeRobot env config), not both")
    ours = {f.name for f in dataclasses.fields(EnvConfig)}
    options = dict(env.get("options") or {})
    options.update({key: value for key, value in env.items() if key not in ours})
    data["env"] = {**{key: value for key, value in env.items() if key in ours}, "id": None, "options": options}


def recipe_from_dict(data: dict, overrides: list[str] | None = None) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe is a mapping of sections (env, base, algorithm, train ...), got {type(data).__name__}")
    data = dict(data)
    for key, value in parse_overrides(overrides or []):
        _set_path(data, key, value)
    _gather_lerobot_env_fields(data)
    recipe = _from_dict(Recipe, data, "")
    validate_recipe(recipe)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe; every problem raises :class:`RecipeError` before any work starts."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {str(path)!r} not found")
    try:
        data = _yaml(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not UTF-8 text; a recipe is a YAML file") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        raise RecipeError(f"{path} is empty: a recipe names at least its env and what to train (see recipes/)")
    try:
        recipe = recipe_from_dict(data, overrides)
    except RecipeError as exc:
        raise RecipeError(f"{path}: {exc}") from None
    if recipe.name == "unnamed":
        recipe.name = path.stem
    return recipe


def range_errors(recipe: Recipe) -> list[str]:
    """Every field of every section outside its declared range (``vla_steer.fields.bounded``)."""
    return [problem for f in dataclasses.fields(recipe) if dataclasses.is_dataclass(section := getattr(recipe, f.name))
            for problem in range_problems(section, f.name)]


def validate_recipe(recipe: Recipe) -> None:
    """Every field against its declared range (a recipe built in code is judged as a parsed one), then cross-field
    checks, including that the env exists (cheap: no simulator is built)."""
    problems = range_errors(recipe)
    if problems:
        raise RecipeError("; ".join(problems))
    env, base = recipe.env, recipe.base
    if env.type is not None:
        from vla_steer.envs.lerobot_envs import lerobot_env_config

        from vla_steer.envs.robot_env import ENV_TYPE as ROBOT_ENV_TYPE

        own = ("observation", "image_size", "camera", "state", "max_episode_steps", "only_task")
        own += () if env.type == ROBOT_ENV_TYPE else ("kwargs",)  # gym_hil's gym.make arguments
        built_in_only = [name for name in own if getattr(env, name) != getattr(EnvConfig(), name)]
        if built_in_only:
            raise RecipeError(f"env.{built_in_only[0]} applies to built-in envs (env.id) only; with env.type set the "
                              "LeRobot env's own fields shape it (e.g. obs_type, episode_length)")
        try:
            lerobot_env_config(env.type, env.options)
        except ValueError as exc:
            raise RecipeError(str(exc)) from None
    elif env.id is None:
        raise RecipeError("env: set env.id (e.g. metaworld/push-v3) or env.type (a LeRobot env config, e.g. pusht)")
    else:
        from vla_steer.envs.registry import validate_env_id

        try:
            validate_env_id(env.id)
        except ValueError as exc:
            raise RecipeError(f"env.id: {exc}") from None
        if env.options:
            raise RecipeError("env.options holds a LeRobot env config's fields: set env.type, or remove them")
        from vla_steer.envs.registry import task_ids

        n_tasks = len(task_ids(env.id))
        if env.only_task is not None and env.only_task >= n_tasks:
            raise RecipeError(f"env.only_task={env.only_task}, but env.id {env.id!r} has {n_tasks} task(s) (0-based)")
        t = recipe.train
        eval_envs = min(t.eval_num_envs, t.eval_episodes)
        if n_tasks > 1 and env.only_task is None and (env.num_envs % n_tasks or eval_envs % n_tasks):
            raise RecipeError(f"env.id {env.id!r} is a set of {n_tasks} tasks, spread over the envs (env i runs task i mod "
                              f"{n_tasks}): env.num_envs ({env.num_envs}) and the evaluation envs (min(train.eval_num_envs, "
                              f"train.eval_episodes) = {eval_envs}) must be multiples of {n_tasks}, so every task gets "
                              "the same share (on every process)")
    built_in_base = base.path is None
    checks = [
        (base.n_action_steps <= base.horizon, "base.n_action_steps must be <= base.horizon"),
        (not built_in_base or env.type is None,
         "env.type (a LeRobot env) needs a LeRobot base: set base.path to a LeRobot checkpoint"),
        (not built_in_base or env.type is not None or base.type != "smolvla" or env.observation == "pixels_state",
         "base.type 'smolvla' is trained on images: set env.observation: pixels_state"),
        (not built_in_base or env.type is not None or env.observation == "state" or base.type == "smolvla",
         f"env.observation '{env.observation}' gives image observations, which the built-in "
         f"'{base.type}' policy cannot read: use base.type: smolvla"),
        (base.revision is None or base.path is not None, "base.revision needs base.path (a Hub repo id)"),
        (env.reward_mode != "sparse" or env.terminate_on_success,
         "env.reward_mode 'sparse' needs env.terminate_on_success: true (otherwise success keeps paying 0 forever)"),
        ((recipe.head.latent_layout == "interpolated") == (recipe.head.latent_rows is not None),
         "head.latent_rows (K control rows) goes with head.latent_layout: interpolated, and only with it"),
        (recipe.offline.dataset is None or recipe.algorithm.name == "dsrl_na"
         or (recipe.algorithm.name == "lpds" and recipe.algorithm.critic == "action"),
         "offline.dataset trains the action critic Q^A, which only dsrl_na and lpds with algorithm.critic: action "
         "have (offline data carries no latent for a latent critic)"),
    ]
    for ok, message in checks:
        if not ok:
            raise RecipeError(message)
