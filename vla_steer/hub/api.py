"""Save, load, push and inspect shared steering heads (the format is specified in ``hub/FORMAT.md``).

Everything goes through ``huggingface_hub`` as PEFT and LeRobot do: a local directory is used as it is; anything
else is a Hub repo id, fetched with ``snapshot_download(repo_id, revision=..., allow_patterns=<the format's file
names>)`` (so nothing else is downloaded, and ``HF_HUB_OFFLINE=1`` serves it from the cache), then checked file by
file (:func:`validate_directory`) before any library parses it. Uploads are one commit of an explicit list of
files (:func:`prepare_upload`, then ``HfApi.create_commit``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vla_steer.hub.card import _fmt, render_model_card
from vla_steer.hub.fingerprint import base_fingerprint
from vla_steer.hub.format import (DEFAULT_LIMITS, FORMAT_VERSION, HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME, LEARNING_CURVE_NAME,
                                  LOAD_PATTERNS, MODEL_CARD_NAME, POLICY_CONFIG_NAME, PROCESSOR_CONFIG_NAMES,
                                  PROCESSOR_PATTERNS, HeadFormatError, Limits, check_policy_config,
                                  check_processor_config, dump_json, is_format_file, is_hub_repo_id, read_json,
                                  to_json_safe)
from vla_steer.lerobot_policy.head import HEAD_TYPES, ActingHead, validate_head_config

BASE_PATTERNS = ["config.json", "model.safetensors", *PROCESSOR_PATTERNS]  # a base policy as LeRobot / vla_steer save it
HUB_KWARGS = ("cache_dir", "token", "local_files_only", "force_download", "proxies")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _hub_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k in HUB_KWARGS and v is not None}


# -------------------------------------------------------------------------------------------------------------
# where files come from
def resolve_repo(repo_id_or_path: str | Path, *, revision: str | None = None, patterns: list[str] | None = None,
                 local_dir: str | Path | None = None, **hub: Any) -> Path:
    """A local directory as it is, or a Hub repo's snapshot at ``revision`` holding only files matching ``patterns``
    (default: what loading a head needs). ``hub``: ``cache_dir``, ``token``, ``local_files_only``,
    ``force_download``, ``proxies``, passed to ``huggingface_hub.snapshot_download``."""
    name = str(repo_id_or_path)
    path = Path(name).expanduser()
    if path.is_dir() and local_dir is None:
        return path
    if path.exists() or not is_hub_repo_id(name):
        raise FileNotFoundError(f"{name!r} is neither a directory nor a Hub repo id (org/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        folder = snapshot_download(name, revision=revision, allow_patterns=patterns or LOAD_PATTERNS,
                                   local_dir=local_dir, **_hub_kwargs(hub))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as exc:
        raise FileNotFoundError(f"cannot get {name!r} at revision {revision or 'main'} from the Hub or its local cache: "
                                f"{exc}") from exc
    return Path(folder)


def library_for_family(family: str | None) -> str:
    """Which library a base steered through adapter ``family`` comes from (how to load it by name)."""
    from vla_steer.adapters.lerobot import LEROBOT_ADAPTERS

    if family == "native":
        return "vla_steer"
    return "lerobot" if family in LEROBOT_ADAPTERS else "custom"


def check_base_config_file(directory: Path, library: str, policy_type: str | None = None) -> dict:
    """A base's ``config.json``, read as JSON and checked before its library parses it."""
    from vla_steer.adapters.lerobot import LEROBOT_ADAPTERS

    config = read_json(directory / "config.json", f"base config.json ({directory})")
    kind = config.get("type") if isinstance(config, dict) else None
    allowed = ("diffusion", "flow") if library == "vla_steer" else tuple(LEROBOT_ADAPTERS)
    if kind not in allowed or (policy_type is not None and kind != policy_type):
        expected = repr(policy_type) if policy_type else f"one of {list(allowed)}"
        raise HeadFormatError(f"the base at {directory} is a {kind!r} policy; expected a {library} policy of type {expected}")
    return config


def load_base_adapter(base: Any, *, library: str, policy_type: str | None = None, revision: str | None = None,
                      adapter_kwargs: dict | None = None, device: str | torch.device | None = None, **hub: Any):
    """The adapter of a base given as an adapter, a policy module, a local directory or a Hub repo id."""
    from vla_steer.adapters import NativePolicyAdapter, adapter_for_lerobot_policy
    from vla_steer.adapters.base import SteerableAdapter
    from vla_steer.policies.base import ChunkPolicy

    adapter_kwargs = dict(adapter_kwargs or {})
    if isinstance(base, SteerableAdapter):
        return base
    if isinstance(base, ChunkPolicy):
        return NativePolicyAdapter(base)
    if isinstance(base, nn.Module):
        return adapter_for_lerobot_policy(base, **adapter_kwargs)
    if library == "custom":
        raise ValueError(f"this head steers a custom base (adapter {policy_type!r}) that cannot be loaded by name: "
                         "pass base=<its adapter>")
    directory = resolve_repo(base, revision=revision, patterns=BASE_PATTERNS, **hub)
    check_base_config_file(directory, library, policy_type)
    if library == "vla_steer":
        from vla_steer.policies import load_chunk_policy

        return NativePolicyAdapter(load_chunk_policy(directory, device=device or "cpu"))
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class

    config = PreTrainedConfig.from_pretrained(directory)
    if device is not None:
        config.device = str(device)
    policy = get_policy_class(config.type).from_pretrained(directory, config=config)
    return adapter_for_lerobot_policy(policy, **adapter_kwargs)


def load_base_for(config: dict, base: Any = None, **kwargs: Any):
    """The adapter of the base a (validated, format-1) head config names, or of ``base`` if one is given."""
    library = config.get("base_library") or library_for_family(config.get("adapter"))
    if base is None:
        if "base_model_name_or_path" not in config:
            raise ValueError("this head (format 0: a training run's head/) does not name its base: pass base=")
        base, kwargs = config["base_model_name_or_path"], {"revision": config.get("revision"), **kwargs}
    features = config.get("features") or {}
    return load_base_adapter(base, library=library, policy_type=config.get("base_policy_type"),
                             adapter_kwargs=features.get("adapter_kwargs"), **kwargs)


# -------------------------------------------------------------------------------------------------------------
# writing
def base_record(adapter, *, base_model_name_or_path: str, revision: str | None = None,
                adapter_kwargs: dict | None = None, full_fingerprint: bool = False) -> dict:
    """The format-1 fields describing the base behind ``adapter``."""
    import importlib.metadata

    import vla_steer

    library = library_for_family(adapter.family)
    policy = getattr(adapter, "policy", None)
    policy_type = getattr(getattr(policy, "config", None), "type", None) or adapter.family
    version = vla_steer.__version__ if library == "vla_steer" else (
        importlib.metadata.version("lerobot") if library == "lerobot" else "")
    pooling = getattr(adapter, "pooling", None)
    return {
        "adapter": adapter.family,
        "features": {"pooling": pooling if isinstance(pooling, str) else None,
                     "adapter_kwargs": to_json_safe(dict(adapter_kwargs or {}))},
        "base_model_name_or_path": str(base_model_name_or_path), "revision": revision, "base_library": library,
        "base_library_version": version, "base_policy_type": str(policy_type),
        "base_fingerprint": base_fingerprint(adapter, full=full_fingerprint),
    }


def shared_head_config(head: ActingHead, record: dict) -> dict:
    """Format-1 ``head_config.json`` of ``head`` on the base ``record`` describes. A fingerprint the head already
    carries (recorded at training) is kept: it says what the head was trained on."""
    import vla_steer

    raw = head.raw_config
    config = {"format_version": FORMAT_VERSION, "head_type": HEAD_TYPES[raw["algorithm"]]}
    config.update({k: raw[k] for k in ("algorithm", "head", "noise_shape", "latent_shape", "feature_dim", "critic") if k in raw})
    config.update(record)
    if raw.get("base_fingerprint"):
        config["base_fingerprint"] = raw["base_fingerprint"]
    training = {**head.training_record.get("training", {})}
    env = raw.get("env") or training.get("env")
    if env:
        config["env"] = env
    config["hyperparameters"] = head.training_record.get("hyperparameters", raw.get("hyperparameters", {}))
    config["training"] = training or raw.get("training", {})
    config["vla_steer_version"] = vla_steer.__version__
    config = to_json_safe(config)
    validate_head_config(config)
    return config


def replace_directory(final_dir: str | Path, write) -> Path:
    """Write a head directory under a temporary name, then rename it into place (nothing half-written on a crash).
    An existing directory is replaced only if it holds nothing but head-format files."""
    from vla_steer.training.checkpoint import write_atomically

    final_dir = Path(final_dir).expanduser().resolve()
    if final_dir.exists():
        if not final_dir.is_dir():
            raise FileExistsError(f"{final_dir} exists and is not a directory")
        foreign = sorted(p.name for p in final_dir.iterdir() if not is_format_file(p.name))
        if foreign:
            raise FileExistsError(f"refusing to replace {final_dir}: it holds files that are not part of a head "
                                  f"directory: {foreign[:10]}")
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(final_dir, write)
    return final_dir


def write_head_files(directory: Path, head: ActingHead, config: dict) -> None:
    """``head_config.json``, ``head.safetensors`` and the head's extra files (learning curve) into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    (directory / HEAD_CONFIG_NAME).write_text(dump_json(config))
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
              str(directory / HEAD_WEIGHTS_NAME), metadata={"format": "pt"})
    for name, source in head.extra_files.items():
        if name != LEARNING_CURVE_NAME or not Path(source).is_file() or (directory / name).exists():
            continue
        if Path(source).stat().st_size > DEFAULT_LIMITS.max_image_bytes or Path(source).read_bytes()[:8] != PNG_MAGIC:
            raise HeadFormatError(f"{source} is not a PNG image within {DEFAULT_LIMITS.max_image_bytes} bytes")
        shutil.copyfile(source, directory / name)


def write_model_card(directory: Path, head: ActingHead, config: dict, card_kwargs: dict | None = None) -> None:
    """``README.md`` for the files now in ``directory``."""
    directory = Path(directory)
    files = sorted({p.name for p in directory.iterdir() if is_format_file(p.name)} | {MODEL_CARD_NAME})
    text = render_model_card(config, files, num_parameters=sum(t.numel() for t in head.state_dict().values()),
                             **(card_kwargs or {}))
    (directory / MODEL_CARD_NAME).write_text(text)


def head_config_for_base(head: ActingHead, base: Any = None, *, base_model_name_or_path: str | None = None,
                         revision: str | None = None, adapter_kwargs: dict | None = None,
                         allow_base_mismatch: bool = False, **hub: Any) -> dict:
    """The format-1 config of ``head`` on ``base`` (checked: shapes always, fingerprint unless overridden)."""
    if base is None:
        if head.format_version < 1:
            raise ValueError("this head (format 0: a training run's head/) does not say which base it was trained on; "
                             "pass base= (the base's adapter or policy, or its path or repo id)")
        config = dict(head.raw_config)
        if base_model_name_or_path is not None:
            config["base_model_name_or_path"] = str(base_model_name_or_path)
        if revision is not None:
            config["revision"] = revision
        return shared_head_config(head, {k: config[k] for k in (
            "adapter", "features", "base_model_name_or_path", "revision", "base_library", "base_library_version",
            "base_policy_type", "base_fingerprint")})
    name = base_model_name_or_path or (str(base) if isinstance(base, (str, Path)) else head.base_name)
    if not name:
        raise ValueError("pass base_model_name_or_path=: where users get the base (a Hub repo id, or a path)")
    if adapter_kwargs is None and head.format_version:
        adapter_kwargs = head.raw_config["features"]["adapter_kwargs"]  # as in training
    library = head.raw_config.get("base_library") or library_for_family(head.raw_config.get("adapter"))
    adapter = load_base_adapter(base, library=library, policy_type=head.raw_config.get("base_policy_type"),
                                revision=revision, adapter_kwargs=adapter_kwargs, **hub)
    head.check_base(adapter, adapter_kwargs if head.format_version else None, allow_base_mismatch)
    return shared_head_config(head, base_record(adapter, base_model_name_or_path=name, revision=revision,
                                                adapter_kwargs=adapter_kwargs))


def save_head_dir(save_directory: str | Path, head: ActingHead, *, base: Any = None, base_model_name_or_path: str | None = None,
                  revision: str | None = None, adapter_kwargs: dict | None = None, model_card: bool = False,
                  card_kwargs: dict | None = None, allow_base_mismatch: bool = False) -> Path:
    """Write a shared head directory (see :meth:`ActingHead.save_pretrained`)."""
    config = head_config_for_base(head, base, base_model_name_or_path=base_model_name_or_path, revision=revision,
                                  adapter_kwargs=adapter_kwargs, allow_base_mismatch=allow_base_mismatch)

    def write(directory: Path) -> None:
        write_head_files(directory, head, config)
        if model_card:
            write_model_card(directory, head, config, card_kwargs)

    return replace_directory(save_directory, write)


# -------------------------------------------------------------------------------------------------------------
# checking and loading
@dataclass
class HeadDirectory:
    """A checked head directory: the head (weights loaded), LeRobot's steered config if present, its files."""

    path: Path
    head: ActingHead
    policy_config: dict | None
    files: list[str]
    other_files: list[str] = field(default_factory=list)

    @property
    def config(self) -> dict:
        return self.head.raw_config


def validate_directory(directory: str | Path, limits: Limits = DEFAULT_LIMITS) -> HeadDirectory:
    """Check every file of a head directory before anything else reads it.

    ``head_config.json`` (size, strict JSON, no code references, schema), ``head.safetensors`` (size, header,
    dtypes, byte ranges, every tensor's name and shape against the config), LeRobot's ``config.json`` (type
    ``steered``, a supported base type) and processor files (registry names only, state files checked like
    weights), the card's and learning curve's sizes (never parsed). Raises ``FileNotFoundError`` for missing files
    and :class:`HeadFormatError` for everything else, naming the file and the problem.
    """
    from vla_steer.adapters.lerobot import LEROBOT_ADAPTERS

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    names = sorted(p.name for p in directory.iterdir())
    missing = [n for n in (HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME) if n not in names]
    if missing:
        raise FileNotFoundError(f"{directory} is not a steering-head directory: missing {missing}")
    head = ActingHead.from_dir(directory, limits)
    policy_config = None
    if POLICY_CONFIG_NAME in names:
        policy_config = check_policy_config(directory / POLICY_CONFIG_NAME, LEROBOT_ADAPTERS, limits)
        if head.raw_config.get("base_library", "lerobot") != "lerobot":
            raise HeadFormatError(f"{POLICY_CONFIG_NAME} describes a LeRobot steered policy but {HEAD_CONFIG_NAME} "
                                  f"says the base is a {head.raw_config['base_library']} policy")
        missing = [n for n in PROCESSOR_CONFIG_NAMES if n not in names]
        if missing:
            raise FileNotFoundError(f"{directory} holds a LeRobot steered policy without its processor files: missing {missing}")
    for name in PROCESSOR_CONFIG_NAMES:
        if name in names:
            check_processor_config(directory / name, limits)
    if MODEL_CARD_NAME in names and (directory / MODEL_CARD_NAME).stat().st_size > limits.max_card_bytes:
        raise HeadFormatError(f"{MODEL_CARD_NAME} is over the {limits.max_card_bytes}-byte limit")
    if LEARNING_CURVE_NAME in names:
        path = directory / LEARNING_CURVE_NAME
        if path.stat().st_size > limits.max_image_bytes:
            raise HeadFormatError(f"{LEARNING_CURVE_NAME} is over the {limits.max_image_bytes}-byte limit")
        with open(path, "rb") as f:
            if f.read(8) != PNG_MAGIC:
                raise HeadFormatError(f"{LEARNING_CURVE_NAME} is not a PNG image")
    files = [n for n in names if is_format_file(n) and (directory / n).is_file()]
    return HeadDirectory(directory, head, policy_config, files, [n for n in names if n not in files])


class SteeredChunkPolicy:
    """A head on a base that is not a LeRobot policy (vla_steer's built-in chunk policies, a custom flow head):
    one ``encode``, the head, ``decode`` from the noise it picks. ``noise`` is the prior draw ``eps`` in latent
    space, as for ``SteeredPolicy``."""

    def __init__(self, head: ActingHead, adapter, deterministic: bool = False):
        self.adapter, self.deterministic = adapter, deterministic
        self.head = head.to(adapter.device)

    @property
    def n_action_steps(self) -> int:
        return self.adapter.n_action_steps

    @torch.no_grad()
    def predict_action_chunk(self, observation, noise: torch.Tensor | None = None,
                             deterministic: bool | None = None) -> torch.Tensor:
        context = self.adapter.encode(observation)
        deterministic = self.deterministic if deterministic is None else deterministic
        latent = self.head(context.features.float(), eps=noise, deterministic=deterministic)
        return self.adapter.decode(context, self.head.layout.to_noise(latent))


def load_steered(repo_id_or_path: str | Path, *, revision: str | None = None, base: Any = None,
                 allow_base_mismatch: bool = False, device: str | None = None, deterministic: bool = False,
                 limits: Limits = DEFAULT_LIMITS, **hub: Any):
    """A shared head and the base it names, ready to act.

    LeRobot bases give a ``SteeredPolicy`` (LeRobot's policy interface); vla_steer's own bases give a
    :class:`SteeredChunkPolicy`. The base loads from the id and revision the head config names unless ``base``
    (an adapter, a policy, a path or a repo id) is given. The head refuses a base whose fingerprint or shapes
    differ; ``allow_base_mismatch=True`` turns a fingerprint difference into a loud warning.
    """
    from vla_steer.lerobot_policy.configuration_steered import SteeredConfig
    from vla_steer.lerobot_policy.modeling_steered import SteeredPolicy

    directory = resolve_repo(repo_id_or_path, revision=revision, **hub)
    checked = validate_directory(directory, limits)
    head, config = checked.head, checked.head.raw_config
    if checked.policy_config is not None:  # a LeRobot steered policy directory
        from lerobot.configs.policies import PreTrainedConfig

        base_policy = None
        if base is not None:
            adapter_kwargs = checked.policy_config.get("adapter_kwargs") or {}
            base_policy = load_base_adapter(base, library="lerobot", policy_type=checked.policy_config["base_type"],
                                            adapter_kwargs=adapter_kwargs, device=device, **_hub_kwargs(hub)).policy
        policy_config = PreTrainedConfig.from_pretrained(directory)
        policy_config.deterministic = deterministic or policy_config.deterministic
        if device is not None:
            policy_config.device = str(device)
        return SteeredPolicy.from_pretrained(directory, config=policy_config, base_policy=base_policy,
                                             allow_base_mismatch=allow_base_mismatch, **_hub_kwargs(hub))
    adapter = load_base_for(config, base, device=device, **_hub_kwargs(hub))
    if library_for_family(adapter.family) == "lerobot":
        steered_config = SteeredConfig(
            base_path=str(base) if isinstance(base, (str, Path)) else config.get("base_model_name_or_path", ""),
            base_revision=None if base is not None else config.get("revision"), base_type=adapter.policy.config.type,
            adapter_kwargs=(config.get("features") or {}).get("adapter_kwargs", {}), deterministic=deterministic,
            device=str(device or adapter.policy.config.device), n_obs_steps=adapter.policy.config.n_obs_steps,
            input_features=dict(adapter.policy.config.input_features),
            output_features=dict(adapter.policy.config.output_features))
        return SteeredPolicy(steered_config, base_policy=adapter.policy, head=head, allow_base_mismatch=allow_base_mismatch)
    head.check_base(adapter, None, allow_base_mismatch)
    return SteeredChunkPolicy(head, adapter, deterministic)


# -------------------------------------------------------------------------------------------------------------
# training runs
BOOKKEEPING = ("env_steps", "iteration", "updates", "wall_time")  # in an evaluation record, but not metrics


def _numbers(metrics: dict | None) -> dict:
    return {k: v for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and "/" not in k and k not in BOOKKEEPING}


def training_record(run_dir: str | Path) -> tuple[dict, dict[str, Path]]:
    """``({"hyperparameters", "training"}, extra files)`` of a training run directory (``results.json``,
    ``recipe.json``, ``learning_curve.png``). These are this machine's own outputs, read as plain JSON."""
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").is_file() else {}
    recipe = results.get("config") or (json.loads((run_dir / "recipe.json").read_text())
                                       if (run_dir / "recipe.json").is_file() else {})
    training = {"env": results.get("task") or recipe.get("env", {}).get("id"), "method": results.get("method"),
                "seed": results.get("seed"), "env_steps": results.get("env_steps"), "updates": results.get("updates"),
                "wall_time_s": results.get("wall_time_s"), "num_processes": results.get("num_processes"),
                "recipe": results.get("recipe") or recipe.get("name")}
    training = {k: v for k, v in training.items() if v is not None}
    if results:
        training["metrics"] = {"base": _numbers(results.get("base")), "steered": _numbers(results.get("final"))}
    if results.get("versions"):
        training["versions"] = results["versions"]
    dataset = (recipe.get("demos") or {}).get("dataset")
    if is_hub_repo_id(dataset):
        training["datasets"] = [dataset]
    hyperparameters = {f"algorithm.{k}": v for k, v in (recipe.get("algorithm") or {}).items()}
    train = recipe.get("train") or {}
    hyperparameters.update({f"train.{k}": train[k] for k in ("total_env_steps", "warmup_env_steps", "buffer_size",
                                                             "eval_episodes", "eval_deterministic") if k in train})
    hyperparameters.update({f"env.{k}": v for k, v in (recipe.get("env") or {}).items() if k != "kwargs"})
    extra = {LEARNING_CURVE_NAME: run_dir / LEARNING_CURVE_NAME} if (run_dir / LEARNING_CURVE_NAME).is_file() else {}
    return to_json_safe({"hyperparameters": hyperparameters, "training": training}), extra


def export_run(run_dir: str | Path, save_directory: str | Path, *, base: Any = None,
               base_model_name_or_path: str | None = None, revision: str | None = None,
               adapter_kwargs: dict | None = None, datasets: list[str] | None = None,
               allow_base_mismatch: bool = False, model_card: bool = True, card_kwargs: dict | None = None) -> Path:
    """A finished training run -> a shared head directory (with its card, metrics and learning curve).

    ``base``: where the base is now (default: the recipe's ``base.path``, or its cached behaviour-cloned base);
    ``base_model_name_or_path`` / ``revision``: what to record (e.g. the Hub repo the base is published as).
    A LeRobot base gives a ``steered`` policy directory (``lerobot-eval --policy.path=`` runs it).
    """
    from vla_steer.config import recipe_from_dict

    run_dir = Path(run_dir)
    head = ActingHead.from_run(run_dir)
    if datasets:
        head.training_record.setdefault("training", {})["datasets"] = list(datasets)
    family = head.raw_config.get("adapter")
    if base is None:
        if family not in (None, "native"):
            raise ValueError(f"this run steered a {family!r} base, which its recipe does not name: pass base= "
                             "(its path or Hub repo id)")
        from vla_steer.pipeline import ensure_base

        recipe = recipe_from_dict(json.loads((run_dir / "recipe.json").read_text()))
        base = recipe.base.path or ensure_base(recipe, show_progress=False)
    if library_for_family(family) != "lerobot":
        return save_head_dir(save_directory, head, base=base, base_model_name_or_path=base_model_name_or_path,
                             revision=revision, adapter_kwargs=adapter_kwargs, model_card=model_card,
                             card_kwargs=card_kwargs, allow_base_mismatch=allow_base_mismatch)
    from vla_steer.lerobot_policy.modeling_steered import SteeredPolicy

    adapter = load_base_adapter(base, library="lerobot", revision=revision, adapter_kwargs=adapter_kwargs)
    policy = SteeredPolicy.from_base(adapter.policy, head, base_path=base_model_name_or_path or str(base),
                                     base_revision=revision, adapter_kwargs=adapter_kwargs,
                                     allow_base_mismatch=allow_base_mismatch)
    policy.save_pretrained(save_directory, model_card=model_card, card_kwargs=card_kwargs)
    return Path(save_directory).expanduser().resolve()


# -------------------------------------------------------------------------------------------------------------
# uploading
@dataclass
class UploadPlan:
    """One commit: the files (``CommitOperationAdd``), its message and description, and what was left out."""

    repo_id: str | None
    operations: list
    commit_message: str
    commit_description: str
    skipped: list[str]

    @property
    def files(self) -> list[str]:
        return [op.path_in_repo for op in self.operations]


def describe(config: dict) -> list[str]:
    """Human-readable lines: what a head is, what it was trained on, its metrics."""
    head, features = config["head"], config.get("features") or {}
    lines = [f"head:        {config['algorithm']} ({config.get('head_type', HEAD_TYPES[config['algorithm']])}), "
             f"format {config.get('format_version', 0)}, hidden {head['hidden_dim']} x {head['num_layers']}, "
             f"bound {head['bound']}"]
    if "base_model_name_or_path" in config:
        lines.append(f"base:        {config['base_model_name_or_path']} @ {config.get('revision') or 'unpinned'} "
                     f"({config['base_policy_type']} policy, {config['base_library']} {config['base_library_version']})")
    else:
        lines.append("base:        not named (format 0: a training run's head/)")
    fingerprint = config.get("base_fingerprint")
    if fingerprint:
        lines.append(f"fingerprint: {fingerprint['method']} weights {fingerprint['weights'][:16]} config "
                     f"{fingerprint['config'][:16]} ({fingerprint['num_tensors']} tensors, "
                     f"{fingerprint['num_parameters']:,} parameters)")
    lines.append(f"shapes:      noise {config['noise_shape']}, latent {config['latent_shape']} "
                 f"({head['latent_layout']}), features {config['feature_dim']} from adapter {config.get('adapter')!r}"
                 + (f", pooling {features.get('pooling')}, adapter_kwargs {features.get('adapter_kwargs')}" if features else ""))
    training = config.get("training") or {}
    if training:
        lines.append("trained:     " + ", ".join(f"{k} {training[k]}" for k in ("env", "method", "env_steps", "seed", "recipe")
                                                 if k in training))
    metrics = training.get("metrics") or {}
    base_metrics, steered_metrics = metrics.get("base") or {}, metrics.get("steered") or {}
    for name in sorted(set(base_metrics) | set(steered_metrics)):
        lines.append(f"  {name:16s} base {_fmt(base_metrics.get(name)):>10s} -> steered {_fmt(steered_metrics.get(name))}")
    return lines


def prepare_upload(directory: str | Path, *, repo_id: str | None = None, commit_message: str | None = None,
                   card_kwargs: dict | None = None, limits: Limits = DEFAULT_LIMITS) -> UploadPlan:
    """Check a head directory and list the commit that uploads it: every format file (nothing else), plus a
    rendered model card if the directory has none. Touches no network; :func:`push_directory` sends it."""
    from huggingface_hub import CommitOperationAdd

    checked = validate_directory(directory, limits)
    head, config = checked.head, checked.head.raw_config
    if head.format_version < 1:
        raise HeadFormatError(f"{checked.path} holds a format-0 head (a training run's head/), which does not name its "
                              "base: export it first (vla-steer push <run_dir> ..., or ActingHead.from_run(run_dir)"
                              ".save_pretrained(dir, base=...))")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(checked.path / name)) for name in checked.files]
    if MODEL_CARD_NAME not in checked.files:
        card = render_model_card(config, sorted([*checked.files, MODEL_CARD_NAME]),
                                 num_parameters=sum(t.numel() for t in head.state_dict().values()),
                                 **{"repo_id": repo_id, **(card_kwargs or {})})
        operations.append(CommitOperationAdd(path_in_repo=MODEL_CARD_NAME, path_or_fileobj=card.encode()))
    operations.sort(key=lambda op: op.path_in_repo)
    message = commit_message or f"Upload {config['algorithm']} steering head for {config['base_model_name_or_path']}"
    description = "\n".join(["Files: " + ", ".join(op.path_in_repo for op in operations), "", *describe(config)])
    return UploadPlan(repo_id, operations, message, description, checked.other_files)


def push_directory(directory: str | Path, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                   token: str | None = None, branch: str | None = None, create_pr: bool | None = None,
                   card_kwargs: dict | None = None):
    """Upload a head directory as one commit (creating the repo, and the branch, if needed). Returns ``CommitInfo``."""
    import vla_steer
    from huggingface_hub import HfApi

    plan = prepare_upload(directory, repo_id=repo_id, commit_message=commit_message,
                          card_kwargs={"repo_id": repo_id, **(card_kwargs or {})})
    api = HfApi(token=token, library_name="vla_steer", library_version=vla_steer.__version__)  # endpoint: HF_ENDPOINT
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if branch and branch != "main":
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    return api.create_commit(repo_id, plan.operations, commit_message=plan.commit_message,
                             commit_description=plan.commit_description, revision=branch, create_pr=create_pr)


def pull(repo_id: str, *, revision: str | None = None, local_dir: str | Path | None = None,
         limits: Limits = DEFAULT_LIMITS, **hub: Any) -> HeadDirectory:
    """Download a head repo's format files (card and learning curve included) and check them."""
    from vla_steer.hub.format import PULL_PATTERNS

    if Path(str(repo_id)).expanduser().is_dir():
        raise ValueError(f"{repo_id} is a local directory; pull takes a Hub repo id")
    return validate_directory(resolve_repo(repo_id, revision=revision, patterns=PULL_PATTERNS, local_dir=local_dir,
                                           **hub), limits)
