"""The acting part of a trained steering head, rebuilt from its ``head_config.json`` alone.

The trainer (``SteeringTrainer.save_head``) writes ``head.safetensors`` with keys ``"<module>.<param>"`` for
the algorithm's ``head_modules()`` and ``head_config.json`` with the algorithm, the :class:`HeadConfig`, the
noise / latent shapes, the feature width and the base's fingerprint (format 0). A shared head directory
(``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``, format 1, spec in ``hub/FORMAT.md``) adds what the
head was trained on: the base's name, revision, type, library version, fingerprint, the feature options, the
hyper-parameters and the training metrics. Acting needs only the actor:

* ``lpds``: ``z = clip(eps + Delta(s), +-bound)``, ``eps ~ N(0, I)``; deterministic: ``eps = 0``.
* ``dsrl_sac`` / ``dsrl_na``: ``z = bound * tanh(mean(s) + std(s) * eps)``; deterministic: ``bound * tanh(mean(s))``.

Heads written by the trainer also ship the latent critic Q^W(s, z) (``"critic": "latent"``, tensors ``critic.*``;
a few hundred kB) so that a deployed policy can pick the best of K proposals (:meth:`ActingHead.best_of_k`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vla_steer.adapters.base import LatentLayout
from vla_steer.config import HeadConfig, RecipeError, _from_dict
from vla_steer.hub.fingerprint import FULL, METHODS, base_fingerprint, compare_fingerprints
from vla_steer.hub.format import (DEFAULT_LIMITS, FORMAT_VERSION, HEAD_CONFIG_NAME, HEAD_DTYPES, HEAD_WEIGHTS_NAME,
                                  LEARNING_CURVE_NAME, BaseMismatchError, HeadFormatError, Limits, dump_json, read_json,
                                  read_safetensors_header, reject_code_references, to_json_safe)
from vla_steer.steering import CriticEnsemble, ResidualPerturbation, TanhGaussianLatentPolicy

__all__ = ["ActingHead", "BaseMismatchError", "HeadFormatError", "validate_head_config", "HEAD_CONFIG_NAME",
           "HEAD_WEIGHTS_NAME"]

logger = logging.getLogger(__name__)

# format 0: what SteeringTrainer.save_head writes
REQUIRED_KEYS = ("algorithm", "head", "noise_shape", "latent_shape", "feature_dim")
OPTIONAL_KEYS = ("adapter", "env", "base_fingerprint", "critic")
# format 1: a shared head (hub/FORMAT.md)
V1_REQUIRED_KEYS = (*REQUIRED_KEYS, "format_version", "head_type", "adapter", "features", "base_model_name_or_path",
                    "revision", "base_library", "base_library_version", "base_policy_type", "base_fingerprint")
V1_OPTIONAL_KEYS = ("env", "hyperparameters", "training", "vla_steer_version", "critic")
ALGORITHM_MODULES = {"lpds": "delta", "dsrl_sac": "actor", "dsrl_na": "actor"}
HEAD_TYPES = {"lpds": "lpds_residual", "dsrl_sac": "dsrl_tanh_gaussian", "dsrl_na": "dsrl_tanh_gaussian"}
BASE_LIBRARIES = ("lerobot", "vla_steer")
FINGERPRINT_KEYS = ("method", "weights", "config", "num_tensors", "num_parameters")
ALLOW_MISMATCH_ENV = "VLA_STEER_ALLOW_BASE_MISMATCH"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_type(config: dict, key: str, types: tuple, description: str) -> None:
    if key in config and not isinstance(config[key], types):
        raise HeadFormatError(f"head config field {key!r} must be {description}, got {type(config[key]).__name__} "
                              f"{config[key]!r}")


def _check_shape(config: dict, key: str) -> tuple[int, int]:
    value = config[key]
    if not (isinstance(value, list) and len(value) == 2 and all(_is_int(d, 1) for d in value)):
        raise HeadFormatError(f"head config field {key!r} must be a list of two positive integers, got {value!r}")
    return tuple(value)


def _check_fingerprint(value: Any) -> None:
    if not (isinstance(value, dict) and set(value) == set(FINGERPRINT_KEYS) and value["method"] in METHODS
            and all(isinstance(value[k], str) and _HEX64.match(value[k]) for k in ("weights", "config"))
            and _is_int(value["num_tensors"]) and _is_int(value["num_parameters"])):
        raise HeadFormatError(f"head config field 'base_fingerprint' must be an object with {list(FINGERPRINT_KEYS)} "
                              f"(method one of {list(METHODS)}, 64-digit lowercase hex digests), got {value!r}")


def validate_head_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check a ``head_config.json`` dict field by field; returns it with ``head`` as a :class:`HeadConfig`.

    Without ``format_version`` the dict is the trainer's format 0; with ``format_version: 1`` it is a shared head
    and the base description is required. Unknown and missing fields, wrong types and code-referencing keys
    (``auto_map``, ``_target_``, ``trust_remote_code`` ...) are errors that name the field.
    """
    if not isinstance(config, dict):
        raise HeadFormatError(f"head config must be a JSON object, got {type(config).__name__}")
    reject_code_references(config, "head config")
    version = config.get("format_version", 0)
    if not _is_int(version) or "format_version" in config and version < 1:
        raise HeadFormatError(f"head config format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise HeadFormatError(f"head config has format_version {version}, written by a newer vla_steer; this one reads "
                              f"format_version <= {FORMAT_VERSION}: upgrade vla_steer")
    required, optional = (V1_REQUIRED_KEYS, V1_OPTIONAL_KEYS) if version else (REQUIRED_KEYS, OPTIONAL_KEYS)
    unknown = sorted(set(config) - set(required) - set(optional))
    if unknown:
        raise HeadFormatError(f"head config has unknown field(s) {unknown}; allowed: {[*required, *optional]}")
    missing = [key for key in required if key not in config]
    if missing:
        raise HeadFormatError(f"head config is missing field(s) {missing}")
    if config["algorithm"] not in ALGORITHM_MODULES:
        raise HeadFormatError(f"head config algorithm {config['algorithm']!r} is unknown; use one of {sorted(ALGORITHM_MODULES)}")
    head = config["head"]
    names = [f.name for f in dataclasses.fields(HeadConfig)]
    if not isinstance(head, dict) or set(head) - set(names):
        extra = sorted(set(head) - set(names)) if isinstance(head, dict) else head
        raise HeadFormatError(f"head config field 'head' has unknown field(s) {extra}; allowed: {names}")
    try:
        head = _from_dict(HeadConfig, head, "head")
    except RecipeError as exc:
        raise HeadFormatError(f"head config field {exc}") from None
    for key in ("hidden_dim", "num_layers", "num_critics"):
        if not _is_int(getattr(head, key), 1 if key != "num_layers" else 0):
            raise HeadFormatError(f"head config field 'head.{key}' must be a positive integer, got {getattr(head, key)!r}")
    if head.encoder_dim is not None and not _is_int(head.encoder_dim, 1):
        raise HeadFormatError("head config field 'head.encoder_dim' must be a positive integer or null")
    if not head.bound > 0:
        raise HeadFormatError(f"head config field 'head.bound' must be positive, got {head.bound!r}")
    noise_shape, latent_shape = _check_shape(config, "noise_shape"), _check_shape(config, "latent_shape")
    if not _is_int(config["feature_dim"], 1):
        raise HeadFormatError(f"head config field 'feature_dim' must be a positive integer, got {config['feature_dim']!r}")
    layout = LatentLayout(head.latent_layout, noise_shape)
    if layout.latent_shape != latent_shape:
        raise HeadFormatError(f"latent_shape {list(latent_shape)} does not follow from noise_shape {list(noise_shape)} "
                              f"under latent_layout {head.latent_layout!r} (expected {list(layout.latent_shape)})")
    _check_type(config, "adapter", (str,), "a string (the adapter family)")
    _check_type(config, "env", (str, type(None)), "a string or null")
    if "base_fingerprint" in config:
        _check_fingerprint(config["base_fingerprint"])
    if config.get("critic", "latent") != "latent":
        raise HeadFormatError(f"head config field 'critic' must be \"latent\" (the head ships its Q^W(s, z) for "
                              f"best-of-K selection) or absent, got {config['critic']!r}")
    if version:
        if config["head_type"] != HEAD_TYPES[config["algorithm"]]:
            raise HeadFormatError(f"head config head_type {config['head_type']!r} does not match algorithm "
                                  f"{config['algorithm']!r} (expected {HEAD_TYPES[config['algorithm']]!r})")
        features = config["features"]
        if not (isinstance(features, dict) and set(features) == {"pooling", "adapter_kwargs"}
                and isinstance(features["pooling"], (str, type(None))) and isinstance(features["adapter_kwargs"], dict)):
            raise HeadFormatError(f"head config field 'features' must be {{'pooling': string or null, 'adapter_kwargs': "
                                  f"object}}, got {features!r}")
        if not (isinstance(config["base_model_name_or_path"], str) and config["base_model_name_or_path"]):
            raise HeadFormatError("head config field 'base_model_name_or_path' must be a non-empty string")
        _check_type(config, "revision", (str, type(None)), "a string or null")
        if config["base_library"] not in BASE_LIBRARIES:
            raise HeadFormatError(f"head config base_library {config['base_library']!r} is unknown; use one of {list(BASE_LIBRARIES)}")
        for key in ("base_library_version", "base_policy_type", "vla_steer_version"):
            _check_type(config, key, (str,), "a string")
        for key in ("hyperparameters", "training"):
            _check_type(config, key, (dict,), "an object")
    return {**config, "head": head, "noise_shape": noise_shape, "latent_shape": latent_shape}


def tensor_problems(expected: dict[str, tuple], found: dict[str, tuple]) -> list[str]:
    """Missing, unexpected and wrongly shaped tensors between a head's modules and a file."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k}: file {list(found[k])} vs head {list(v)}" for k, v in expected.items()
             if k in found and tuple(found[k]) != tuple(v)]
    return [p for p in (f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "",
                        f"wrong shapes [{'; '.join(wrong)}]" if wrong else "") if p]


def _allow_mismatch(allow: bool) -> bool:
    return allow or os.environ.get(ALLOW_MISMATCH_ENV, "") == "1"


class ActingHead(nn.Module):
    """The trained acting module of one algorithm: features ``[B, F]`` -> latent ``[B, latent_dim]``."""

    def __init__(self, head_config: dict[str, Any]):
        super().__init__()
        config = validate_head_config(head_config)
        head: HeadConfig = config["head"]
        self.algorithm = config["algorithm"]
        self.raw_config = to_json_safe({**config, "head": dataclasses.asdict(head), "noise_shape": list(config["noise_shape"]),
                                        "latent_shape": list(config["latent_shape"])})
        self.layout = LatentLayout(head.latent_layout, config["noise_shape"])
        self.feature_dim, self.bound = int(config["feature_dim"]), float(head.bound)
        latent_dim = self.layout.latent_dim
        if self.algorithm == "lpds":
            self.delta = ResidualPerturbation(self.feature_dim, latent_dim, head.hidden_dim, head.num_layers, head.encoder_dim)
        else:
            self.actor = TanhGaussianLatentPolicy(self.feature_dim, latent_dim, head.hidden_dim, head.num_layers,
                                                  head.bound, head.encoder_dim)
        # optional: the latent critic Q^W(s, z), shipped so that a deployed policy can rank K proposals
        self.critic = CriticEnsemble(self.feature_dim, latent_dim, head.num_critics, head.hidden_dim, head.num_layers,
                                     head.encoder_dim) if config.get("critic") == "latent" else None
        self.requires_grad_(False)
        # Training record not stored in format 0 (set by from_run): {"hyperparameters", "training"}, and extra
        # files to ship with a shared head ({"learning_curve.png": path}).
        self.training_record: dict[str, Any] = {k: config[k] for k in ("hyperparameters", "training") if k in config}
        self.extra_files: dict[str, Path] = {}

    @property
    def latent_dim(self) -> int:
        return self.layout.latent_dim

    @property
    def format_version(self) -> int:
        return int(self.raw_config.get("format_version", 0))

    @property
    def base_name(self) -> str | None:
        return self.raw_config.get("base_model_name_or_path")

    def forward(self, features: torch.Tensor, eps: torch.Tensor | None = None, deterministic: bool = False) -> torch.Tensor:
        """The latent for ``features``. ``eps`` (``[B, *latent_shape]`` or flat) fixes the standard-normal draw."""
        batch = features.shape[0]
        if deterministic:
            eps = torch.zeros(batch, self.latent_dim, device=features.device)
        elif eps is None:
            eps = torch.randn(batch, self.latent_dim, device=features.device)
        eps = eps.reshape(batch, self.latent_dim).to(device=features.device, dtype=torch.float32)
        if self.algorithm == "lpds":
            return (eps + self.delta(features)).clamp(-self.bound, self.bound)
        # The actor's own forward draws its noise internally; this is its reparameterisation with a given draw.
        mean, log_std = self.actor.net(self.actor.encoder(features)).chunk(2, dim=-1)
        log_std = log_std.clamp(self.actor.LOG_STD_MIN, self.actor.LOG_STD_MAX)
        return self.bound * torch.tanh(mean + log_std.exp() * eps)

    def best_of_k(self, features: torch.Tensor, k: int, eps: torch.Tensor | None = None,
                  deterministic: bool = False) -> torch.Tensor:
        """One latent per row of ``features``: the best of ``k`` proposals by the shipped critic's mean over its
        heads. ``eps`` (``[B * k, latent_dim]``, rows grouped per observation) fixes the proposals' prior draws."""
        if self.critic is None:
            raise ValueError("this head ships no critic, so it cannot rank proposals: export it from a training run "
                             "made with this vla_steer version (its head/ includes critic.* tensors), or use best_of_k=1")
        if k < 1:
            raise ValueError(f"best-of-K needs k >= 1, got {k}")
        batch = features.shape[0]
        repeated = features.repeat_interleave(k, dim=0)
        proposals = self(repeated, eps=eps, deterministic=deterministic)
        q = self.critic.reduce(self.critic(repeated, proposals), "mean").view(batch, k)
        return proposals.view(batch, k, -1)[torch.arange(batch, device=q.device), q.argmax(dim=1)]

    # ------------------------------------------------------------------------------------------------
    # which base it fits
    def fit_problems(self, adapter) -> list[str]:
        """Why this head cannot act on ``adapter``'s base at all (family, noise shape, feature width)."""
        raw, problems = self.raw_config, []
        if raw.get("adapter") not in (None, adapter.family):
            problems.append(f"head was trained on a {raw['adapter']!r} adapter, the base needs {adapter.family!r}")
        if tuple(self.layout.noise_shape) != tuple(adapter.noise_shape):
            problems.append(f"head noise_shape {list(self.layout.noise_shape)} != base noise_shape {list(adapter.noise_shape)}")
        if self.feature_dim != adapter.feature_dim:
            problems.append(f"head feature_dim {self.feature_dim} != adapter feature_dim {adapter.feature_dim}")
        return problems

    def base_differences(self, adapter, adapter_kwargs: dict | None = None) -> list[str]:
        """How ``adapter``'s base differs from the recorded one (fingerprint, feature options); empty if it matches
        or if the head records nothing to compare (a format-0 head without a fingerprint)."""
        raw, differences = self.raw_config, []
        features = raw.get("features")
        if features is not None:
            if adapter_kwargs is not None and to_json_safe(adapter_kwargs) != features["adapter_kwargs"]:
                differences.append(f"head was trained with adapter_kwargs {features['adapter_kwargs']}, the base is "
                                   f"adapted with {to_json_safe(adapter_kwargs)}")
            pooling = getattr(adapter, "pooling", None)
            if features["pooling"] != (pooling if isinstance(pooling, str) else None):
                differences.append(f"head was trained on {features['pooling']!r} pooled features, the adapter pools {pooling!r}")
        recorded = raw.get("base_fingerprint")
        if recorded is not None:
            differences += compare_fingerprints(recorded, base_fingerprint(adapter, full=recorded["method"] == FULL))
        return differences

    def check_base(self, adapter, adapter_kwargs: dict | None = None, allow_base_mismatch: bool = False) -> None:
        """Refuse a base this head was not trained on.

        Shape problems (:meth:`fit_problems`) are always errors. A different fingerprint or feature option is a
        :class:`BaseMismatchError` unless ``allow_base_mismatch`` (or ``VLA_STEER_ALLOW_BASE_MISMATCH=1``), in
        which case it is a loud warning.
        """
        problems = self.fit_problems(adapter)
        if problems:
            raise HeadFormatError("head does not fit this base policy: " + "; ".join(problems))
        differences = self.base_differences(adapter, adapter_kwargs)
        if not differences:
            if "base_fingerprint" not in self.raw_config:
                logger.info("this head records no base fingerprint (format 0): the base cannot be verified")
            return
        message = (f"this head was trained on another base than the one given (recorded: "
                   f"{self.base_name or 'unnamed base'}): " + "; ".join(differences))
        if not _allow_mismatch(allow_base_mismatch):
            raise BaseMismatchError(message + f". If you are sure, pass allow_base_mismatch=True (vla-steer: "
                                              f"--allow-base-mismatch; environment: {ALLOW_MISMATCH_ENV}=1)")
        loud = f"BASE MISMATCH OVERRIDDEN: {message}. Its actions may be meaningless on this base."
        warnings.warn(loud, UserWarning, stacklevel=3)
        logger.warning(loud)

    # ------------------------------------------------------------------------------------------------
    # files
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load ``head.safetensors`` contents; any missing, unexpected or wrongly shaped tensor is an error."""
        problems = tensor_problems({k: tuple(v.shape) for k, v in self.state_dict().items()},
                                   {k: tuple(v.shape) for k, v in tensors.items()})
        if problems:
            raise HeadFormatError(self._mismatch_message(problems))
        self.load_state_dict(tensors, strict=True)

    def _mismatch_message(self, problems: list[str]) -> str:
        return (f"head tensors do not match head_config ({self.algorithm}, feature_dim={self.feature_dim}, "
                f"latent_dim={self.latent_dim}): " + ", ".join(problems))

    @classmethod
    def from_dir(cls, directory: str | Path, limits: Limits = DEFAULT_LIMITS) -> "ActingHead":
        """Build from a directory holding ``head_config.json`` and ``head.safetensors`` (a shared head directory or
        the trainer's ``head/``). Everything is checked before tensors are read: the config's size and schema, the
        safetensors header (size, dtypes, byte ranges, truncation) and each tensor's name and shape against the
        modules the config describes, built on the meta device (no memory is allocated for a hostile config)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        config = read_json(directory / HEAD_CONFIG_NAME, HEAD_CONFIG_NAME, limits.max_json_bytes)
        with torch.device("meta"):
            skeleton = cls(config)
        specs = read_safetensors_header(directory / HEAD_WEIGHTS_NAME, HEAD_WEIGHTS_NAME, max_bytes=limits.max_head_bytes,
                                        max_tensors=limits.max_head_tensors, max_header_bytes=limits.max_header_bytes,
                                        dtypes=HEAD_DTYPES)
        problems = tensor_problems({k: tuple(v.shape) for k, v in skeleton.state_dict().items()},
                                   {k: shape for k, (_, shape) in specs.items()})
        if problems:
            raise HeadFormatError(skeleton._mismatch_message(problems))
        head = cls(config)
        try:
            tensors = load_file(str(directory / HEAD_WEIGHTS_NAME))
        except SafetensorError as exc:
            raise HeadFormatError(f"{HEAD_WEIGHTS_NAME} could not be read: {exc}") from None
        head.load_tensors(tensors)
        curve = directory / LEARNING_CURVE_NAME
        if curve.is_file():  # carried along when the head is saved again (size and type checked when copied)
            head.extra_files[LEARNING_CURVE_NAME] = curve
        return head

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "ActingHead":
        """The head of a finished training run (``<output_dir>/head``), with its recipe, metrics and learning curve
        attached, ready for :meth:`save_pretrained` / ``SteeredPolicy.from_base``."""
        from vla_steer.hub.api import training_record

        run_dir = Path(run_dir)
        if not (run_dir / "head" / HEAD_CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{run_dir} is not a finished training run: {run_dir / 'head' / HEAD_CONFIG_NAME} is missing")
        head = cls.from_dir(run_dir / "head")
        head.training_record, head.extra_files = training_record(run_dir)
        return head

    @classmethod
    def from_pretrained(cls, repo_id_or_path: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                        token: str | bool | None = None, local_files_only: bool = False, force_download: bool = False,
                        limits: Limits = DEFAULT_LIMITS) -> "ActingHead":
        """A shared head from a local directory or a Hub repo id (at ``revision``; only the head's two files are
        downloaded). No base is loaded: see ``vla_steer.hub.load_steered`` / ``SteeredPolicy.from_pretrained``."""
        from vla_steer.hub.api import resolve_repo

        directory = resolve_repo(repo_id_or_path, revision=revision, patterns=[HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME],
                                 cache_dir=cache_dir, token=token, local_files_only=local_files_only,
                                 force_download=force_download)
        return cls.from_dir(directory, limits)

    def save(self, directory: str | Path) -> None:
        """Write the two files as they are (the trainer's format if the head came from a run)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(directory / HEAD_WEIGHTS_NAME))
        (directory / HEAD_CONFIG_NAME).write_text(dump_json(self.raw_config))

    def save_pretrained(self, save_directory: str | Path, *, base=None, base_model_name_or_path: str | None = None,
                        revision: str | None = None, adapter_kwargs: dict | None = None, model_card: bool = False,
                        card_kwargs: dict | None = None, allow_base_mismatch: bool = False) -> Path:
        """Write a shared head directory (format 1): ``head_config.json``, ``head.safetensors`` (+ ``README.md``
        with ``model_card=True``, + ``learning_curve.png`` when the head came from a run).

        ``base``: the base's adapter (or the base policy / its path or repo id) to fingerprint; required unless
        this head already describes its base (format 1). ``base_model_name_or_path`` / ``revision``: what to
        record as the base's location (default: ``base`` when it is a path or id). The directory is written
        under a temporary name and renamed into place."""
        from vla_steer.hub.api import save_head_dir

        return save_head_dir(save_directory, self, base=base, base_model_name_or_path=base_model_name_or_path,
                             revision=revision, adapter_kwargs=adapter_kwargs, model_card=model_card,
                             card_kwargs=card_kwargs, allow_base_mismatch=allow_base_mismatch)

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None, branch: str | None = None, create_pr: bool | None = None,
                    card_kwargs: dict | None = None, **save_kwargs) -> Any:
        """Save (as :meth:`save_pretrained`, model card included) to a temporary directory and upload it in one
        commit. Returns huggingface_hub's ``CommitInfo``."""
        import tempfile

        from vla_steer.hub.api import push_directory

        with tempfile.TemporaryDirectory() as tmp:
            directory = self.save_pretrained(Path(tmp) / "head", card_kwargs={"repo_id": repo_id, **(card_kwargs or {})},
                                             model_card=True, **save_kwargs)
            return push_directory(directory, repo_id, commit_message=commit_message, private=private, token=token,
                                  branch=branch, create_pr=create_pr)
