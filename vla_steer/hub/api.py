"""Where head files come from and go to: resolve a repo / revision to a local directory, check a whole head
directory, describe it, push it, pull it; load the base a head names; the training record of a run.

Everything goes through ``huggingface_hub`` as PEFT and LeRobot do: a local directory is used as it is; anything
else is a Hub repo id, fetched with ``snapshot_download(repo_id, revision=..., allow_patterns=<the format's file
names>)`` (so nothing else is downloaded, and ``HF_HUB_OFFLINE=1`` serves it from the cache), then checked file by
file (:func:`validate_directory`) before any library parses it. Uploads are one commit of an explicit list of
files (:func:`prepare_upload`, then ``HfApi.create_commit``). The format is specified in ``hub/FORMAT.md``.

This module, like all of ``vla_steer.hub``, works on files, dicts and tensors: the acting head
(``vla_steer.lerobot_policy.ActingHead``) and the steered policy sit above it and use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vla_steer.adapters.base import LatentLayout
from vla_steer.hub.card import _fmt, render_model_card
from vla_steer.hub.fingerprint import base_fingerprint
from vla_steer.hub.format import (DEFAULT_LIMITS, HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME, LEARNING_CURVE_NAME,
                                  LOAD_PATTERNS, MODEL_CARD_NAME, POLICY_CONFIG_NAME, PROCESSOR_CONFIG_NAMES,
                                  PROCESSOR_PATTERNS, HeadFormatError, Limits, check_policy_config,
                                  check_processor_config, is_format_file, is_hub_repo_id, read_json, to_json_safe)
from vla_steer.hub.head_files import PNG_MAGIC, read_head
from vla_steer.hub.schema import HEAD_TYPES, validate_head_config

BASE_PATTERNS = ["config.json", "model.safetensors", *PROCESSOR_PATTERNS]  # a base policy as LeRobot / vla_steer save it
HUB_KWARGS = ("cache_dir", "token", "local_files_only", "force_download", "proxies")


def hub_kwargs(kwargs: dict) -> dict:
    """The ``huggingface_hub`` download options among ``kwargs`` (``cache_dir``, ``token`` ...)."""
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
                                   local_dir=local_dir, **hub_kwargs(hub))
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
# what a format-1 config says about the base; the model card
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


def write_model_card(directory: str | Path, config: dict, *, num_parameters: int | None = None,
                     card_kwargs: dict | None = None) -> None:
    """``README.md`` for a format-1 ``config`` and the format files now in ``directory``."""
    directory = Path(directory)
    files = sorted({p.name for p in directory.iterdir() if is_format_file(p.name)} | {MODEL_CARD_NAME})
    text = render_model_card(config, files, num_parameters=num_parameters, **(card_kwargs or {}))
    (directory / MODEL_CARD_NAME).write_text(text)


# -------------------------------------------------------------------------------------------------------------
# checking and loading
@dataclass
class HeadDirectory:
    """A checked head directory: its head (``config``: ``head_config.json``, canonical; ``tensors``: the contents
    of ``head.safetensors``, checked against it), LeRobot's steered config if present, its files. The acting head
    is ``vla_steer.lerobot_policy.ActingHead.from_checked(checked)``."""

    path: Path
    config: dict
    tensors: dict[str, torch.Tensor]
    policy_config: dict | None
    files: list[str]
    other_files: list[str] = field(default_factory=list)

    @property
    def format_version(self) -> int:
        return int(self.config.get("format_version", 0))

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())


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
    _refuse_outside_links(directory, names)
    config, tensors = read_head(directory, limits)
    policy_config = None
    if POLICY_CONFIG_NAME in names:
        policy_config = check_policy_config(directory / POLICY_CONFIG_NAME, LEROBOT_ADAPTERS, limits)
        if config.get("base_library", "lerobot") != "lerobot":
            raise HeadFormatError(f"{POLICY_CONFIG_NAME} describes a LeRobot steered policy but {HEAD_CONFIG_NAME} "
                                  f"says the base is a {config['base_library']} policy")
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
    return HeadDirectory(directory, config, tensors, policy_config, files, [n for n in names if n not in files])


def _refuse_outside_links(directory: Path, names: list[str]) -> None:
    """Refuse format files that are symbolic links leading out of the directory (``head.safetensors ->
    /home/you/.ssh/...``). A Hub cache snapshot's links into its own repo's ``blobs/`` are what the cache is made of,
    and are allowed."""
    directory = directory.resolve()
    repo = directory.parent.parent  # a Hub cache snapshot is <cache>/models--<org>--<name>/snapshots/<revision>
    in_cache = directory.parent.name == "snapshots" and repo.name.startswith("models--")
    allowed = repo / "blobs" if in_cache else directory
    for name in names:
        path = directory / name
        if is_format_file(name) and path.is_symlink() and not path.resolve().is_relative_to(allowed):
            raise HeadFormatError(f"{directory}/{name} is a symbolic link to {path.resolve()}, outside the head "
                                  "directory; copy the file into the directory instead")


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
    config: dict  # the checked head_config.json

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
    layout = LatentLayout.from_head(validate_head_config(config)["head"], config["noise_shape"])
    lines.append(f"shapes:      noise {config['noise_shape']}, latent {config['latent_shape']} "
                 f"({layout.describe()}), features {config['feature_dim']} from adapter {config.get('adapter')!r}"
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
    config = checked.config
    if checked.format_version < 1:
        raise HeadFormatError(f"{checked.path} holds a format-0 head (a training run's head/), which does not name its "
                              "base: export it first (vla-steer push <run_dir> ..., or ActingHead.from_run(run_dir)"
                              ".save_pretrained(dir, base=...))")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(checked.path / name)) for name in checked.files]
    if MODEL_CARD_NAME not in checked.files:
        card = render_model_card(config, sorted([*checked.files, MODEL_CARD_NAME]),
                                 num_parameters=checked.num_parameters,
                                 **{"repo_id": repo_id, **(card_kwargs or {})})
        operations.append(CommitOperationAdd(path_in_repo=MODEL_CARD_NAME, path_or_fileobj=card.encode()))
    operations.sort(key=lambda op: op.path_in_repo)
    message = commit_message or f"Upload {config['algorithm']} steering head for {config['base_model_name_or_path']}"
    description = "\n".join(["Files: " + ", ".join(op.path_in_repo for op in operations), "", *describe(config)])
    return UploadPlan(repo_id, operations, message, description, checked.other_files, config)


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


# -------------------------------------------------------------------------------------------------------------
# finding heads for a base
@dataclass
class FoundHead:
    """A Hub head whose recorded base fingerprint has the searched base's weights."""

    repo_id: str
    revision: str
    algorithm: str
    env: str | None
    adapter_kwargs: dict  # the adapter options it was trained with (denoising steps ...): part of what must match
    metrics: dict = field(default_factory=dict)  # {"base": {...}, "steered": {...}} from the training record
    last_modified: str | None = None


def fingerprint_base(base: str | Path, *, revision: str | None = None, full: bool = False, **hub: Any) -> dict:
    """The fingerprint of a base checkpoint (a local directory or a Hub repo id, LeRobot or vla_steer), loaded
    without adapter options: its weights digest is what heads trained on it are tagged with."""
    directory = resolve_repo(base, revision=revision, patterns=BASE_PATTERNS, **hub)
    config = read_json(directory / "config.json", f"base config.json ({directory})")
    library = "lerobot" if isinstance(config, dict) and "input_features" in config else "vla_steer"
    return base_fingerprint(load_base_adapter(str(directory), library=library), full=full)


def search_heads(base: str | Path, *, revision: str | None = None, limit: int = 100, full_fingerprint: bool = False,
                 **hub: Any) -> tuple[dict, list[FoundHead], list[str]]:
    """Hub heads trained on exactly ``base``: ``(its fingerprint, heads, skipped)``.

    Lists the models tagged with the base's tag (:func:`vla_steer.hub.fingerprint.base_tag`) through
    ``HfApi.list_models``, reads each one's ``head_config.json`` at the listed commit, and keeps those whose
    recorded weights digest equals the base's; ``skipped`` says why the others were left out (a tag is not proof).
    The config half of the fingerprint also covers adapter options, which differ per head: ``vla-steer info <repo>
    --base <base>`` checks a chosen head completely."""
    from huggingface_hub import HfApi, hf_hub_download

    from vla_steer.hub.fingerprint import base_tag
    fingerprint = fingerprint_base(base, revision=revision, full=full_fingerprint, **hub)
    api_kwargs = {k: v for k, v in hub.items() if k == "token"}
    found, skipped = [], []
    for model in HfApi().list_models(filter=[base_tag(fingerprint)], limit=limit, **api_kwargs):
        try:
            path = hf_hub_download(model.id, HEAD_CONFIG_NAME, revision=model.sha, **hub_kwargs(hub))
            config = validate_head_config(read_json(Path(path), f"{model.id}/{HEAD_CONFIG_NAME}"))
        except Exception as exc:  # one unreadable repo must not hide the others
            skipped.append(f"{model.id}: {HEAD_CONFIG_NAME} unreadable ({type(exc).__name__}: {exc})")
            continue
        recorded = config.get("base_fingerprint")
        if not recorded or recorded["method"] != fingerprint["method"] or recorded["weights"] != fingerprint["weights"]:
            skipped.append(f"{model.id}: tagged for this base, but its recorded fingerprint is of other weights")
            continue
        training = config.get("training") or {}
        found.append(FoundHead(
            repo_id=model.id, revision=model.sha or "main", algorithm=config["algorithm"], env=config.get("env"),
            adapter_kwargs=(config.get("features") or {}).get("adapter_kwargs") or {}, metrics=training.get("metrics") or {},
            last_modified=str(model.last_modified) if model.last_modified else None))
    return fingerprint, found, skipped
