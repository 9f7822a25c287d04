"""``head_config.json``: its schema, and the modules (so the tensors) a config describes.

Format 0 is what a training run writes into ``<run>/head/``; format 1 (``format_version: 1``) is a shared head,
which adds the base it was trained on. Both are specified in ``hub/FORMAT.md``. The acting modules and their
tensor names come from the methods' acting rules (``vla_steer.steering.ACTING_RULES``: ``delta.*`` for LP-DS,
``actor.*`` for DSRL), so what the trainer ships, what this format accepts and what a deployed head builds are
one definition.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch
from torch import nn

from vla_steer.adapters.base import LatentLayout
from vla_steer.config import HeadConfig, RecipeError, _from_dict
from vla_steer.hub.fingerprint import METHODS
from vla_steer.hub.format import FORMAT_VERSION, HeadFormatError, reject_code_references, to_json_safe
from vla_steer.steering import ACTING_RULES, build_latent_critic

# format 0: what a training run writes into <run>/head/
REQUIRED_KEYS = ("algorithm", "head", "noise_shape", "latent_shape", "feature_dim")
OPTIONAL_KEYS = ("adapter", "env", "base_fingerprint", "critic")
# format 1: a shared head (hub/FORMAT.md)
V1_REQUIRED_KEYS = (*REQUIRED_KEYS, "format_version", "head_type", "adapter", "features", "base_model_name_or_path",
                    "revision", "base_library", "base_library_version", "base_policy_type", "base_fingerprint")
V1_OPTIONAL_KEYS = ("env", "hyperparameters", "training", "vla_steer_version", "critic")
# which module acts, per algorithm (its tensors are "<module>.*"), and the head_type naming its acting rule
ALGORITHM_MODULES = {name: rule.module for name, rule in ACTING_RULES.items()}
HEAD_TYPES = {"lpds": "lpds_residual", "dsrl_sac": "dsrl_tanh_gaussian", "dsrl_na": "dsrl_tanh_gaussian"}
CRITIC_MODULE = "critic"  # the latent critic Q^W(s, z), shipped with "critic": "latent"
BASE_LIBRARIES = ("lerobot", "vla_steer")
FINGERPRINT_KEYS = ("method", "weights", "config", "num_tensors", "num_parameters")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Sizes a head config may describe, checked before any module is built. pi0's noise is 50 x 32 and VLM features a
# few thousand wide; a trained head has well under a million parameters. These leave ample room and nothing more.
MAX_NOISE_ELEMENTS = 1 << 20
MAX_FEATURE_DIM = 1 << 20
MAX_HEAD_MODULES = 10_000
MAX_HEAD_PARAMETERS = 1 << 27  # 128 Mi parameters: 512 MiB in float32
assert set(HEAD_TYPES) == set(ACTING_RULES), "every algorithm with an acting rule needs a head_type"


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


def _layout(head, noise_shape: tuple[int, int]) -> LatentLayout:
    try:
        return LatentLayout.from_head(head, noise_shape)
    except ValueError as exc:
        raise HeadFormatError(f"head config: {exc}") from None


def _check_fingerprint(value: Any) -> None:
    if not (isinstance(value, dict) and set(value) == set(FINGERPRINT_KEYS) and value["method"] in METHODS
            and all(isinstance(value[k], str) and _HEX64.match(value[k]) for k in ("weights", "config"))
            and _is_int(value["num_tensors"]) and _is_int(value["num_parameters"])):
        raise HeadFormatError(f"head config field 'base_fingerprint' must be an object with {list(FINGERPRINT_KEYS)} "
                              f"(method one of {list(METHODS)}, 64-digit lowercase hex digests), got {value!r}")


def validate_head_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check a ``head_config.json`` dict field by field; returns it with ``head`` as a ``HeadConfig`` and the
    shapes as tuples.

    Without ``format_version`` the dict is format 0 (a training run's ``head/``); with ``format_version: 1`` it is
    a shared head and the base description is required. Unknown and missing fields, wrong types and
    code-referencing keys (``auto_map``, ``_target_``, ``trust_remote_code`` ...) are errors that name the field.
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
    if noise_shape[0] * noise_shape[1] > MAX_NOISE_ELEMENTS:
        raise HeadFormatError(f"head config field 'noise_shape' {list(noise_shape)} has {noise_shape[0] * noise_shape[1]} "
                              f"elements, over the format's limit of {MAX_NOISE_ELEMENTS}")
    if not (_is_int(config["feature_dim"], 1) and config["feature_dim"] <= MAX_FEATURE_DIM):
        raise HeadFormatError(f"head config field 'feature_dim' must be an integer in 1..{MAX_FEATURE_DIM}, got "
                              f"{config['feature_dim']!r}")
    layout = _layout(head, noise_shape)
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


#: head fields added after format 1 was published: written only when set, so a plain head stays readable by
#: releases that do not know them
LATER_HEAD_FIELDS = ("latent_rows", "steered_dims")


def head_fields(head) -> dict[str, Any]:
    """A :class:`HeadConfig` as a head config's ``head`` object (later fields only when set)."""
    return {key: value for key, value in dataclasses.asdict(head).items()
            if not (key in LATER_HEAD_FIELDS and value is None)}


def canonical_head_config(config: dict[str, Any]) -> dict[str, Any]:
    """A checked ``head_config.json`` dict as JSON: ``head`` with every field (defaults filled in), shapes as lists."""
    checked = validate_head_config(config)
    return to_json_safe({**checked, "head": head_fields(checked["head"]),
                         "noise_shape": list(checked["noise_shape"]), "latent_shape": list(checked["latent_shape"])})


def build_head_modules(config: dict[str, Any]) -> dict[str, nn.Module]:
    """The modules a (valid) head config describes, by name: the acting module of its algorithm (``delta`` /
    ``actor``) and, with ``"critic": "latent"``, the latent critic (``critic``). Their ``state_dict`` entries,
    prefixed ``"<name>."``, are exactly the tensors of ``head.safetensors``.

    They are first built on the meta device (no memory) and counted: a config describing more than
    ``MAX_HEAD_MODULES`` modules or ``MAX_HEAD_PARAMETERS`` parameters is refused before anything is allocated."""
    checked = validate_head_config(config)
    with torch.device("meta"):
        modules = _build_head_modules(checked)
    num_modules = sum(1 for m in modules.values() for _ in m.modules())
    num_parameters = sum(p.numel() for m in modules.values() for p in m.parameters())
    if num_modules > MAX_HEAD_MODULES or num_parameters > MAX_HEAD_PARAMETERS:
        raise HeadFormatError(f"head config describes {num_modules} modules with {num_parameters:,} parameters; the "
                              f"format allows at most {MAX_HEAD_MODULES} modules and {MAX_HEAD_PARAMETERS:,} parameters "
                              "(check head.hidden_dim, head.num_layers, head.num_critics, feature_dim, noise_shape)")
    if torch.get_default_device().type == "meta":  # the caller wants shapes only
        return modules
    return _build_head_modules(checked)


def _build_head_modules(checked: dict[str, Any]) -> dict[str, nn.Module]:
    head = checked["head"]
    feature_dim = int(checked["feature_dim"])
    latent_dim = LatentLayout.from_head(head, checked["noise_shape"]).latent_dim
    rule = ACTING_RULES[checked["algorithm"]]
    modules = {rule.module: rule.build(feature_dim, latent_dim, head)}
    if checked.get("critic") == "latent":
        modules[CRITIC_MODULE] = build_latent_critic(feature_dim, latent_dim, head)
    return modules


def expected_tensor_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` of the ``head.safetensors`` matching ``config`` (no memory allocated)."""
    with torch.device("meta"):
        modules = build_head_modules(config)
    return {f"{name}.{key}": tuple(value.shape) for name, module in modules.items()
            for key, value in module.state_dict().items()}


def tensor_problems(expected: dict[str, tuple], found: dict[str, tuple]) -> list[str]:
    """Missing, unexpected and wrongly shaped tensors between a head's modules and a file."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k}: file {list(found[k])} vs head {list(v)}" for k, v in expected.items()
             if k in found and tuple(found[k]) != tuple(v)]
    return [p for p in (f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "",
                        f"wrong shapes [{'; '.join(wrong)}]" if wrong else "") if p]


def mismatch_message(config: dict[str, Any], problems: list[str]) -> str:
    checked = validate_head_config(config)
    latent_dim = LatentLayout.from_head(checked["head"], checked["noise_shape"]).latent_dim
    return (f"head tensors do not match head_config ({checked['algorithm']}, feature_dim={checked['feature_dim']}, "
            f"latent_dim={latent_dim}): " + ", ".join(problems))


def shared_head_config(config: dict[str, Any], base: dict[str, Any], training_record: dict[str, Any] | None = None) -> dict:
    """The format-1 ``head_config.json`` of the head ``config`` describes (format 0 or 1), on the base ``base``
    describes (``vla_steer.hub.api.base_record``), with ``training_record`` (``{"hyperparameters", "training"}``,
    :func:`vla_steer.hub.api.training_record`). A fingerprint the head already carries (recorded at training) is
    kept: it says what the head was trained on."""
    import vla_steer

    training_record = training_record or {}
    shared = {"format_version": FORMAT_VERSION, "head_type": HEAD_TYPES[config["algorithm"]]}
    shared.update({k: config[k] for k in ("algorithm", "head", "noise_shape", "latent_shape", "feature_dim", "critic")
                   if k in config})
    shared.update(base)
    if config.get("base_fingerprint"):
        shared["base_fingerprint"] = config["base_fingerprint"]
    training = {**training_record.get("training", {})}
    env = config.get("env") or training.get("env")
    if env:
        shared["env"] = env
    shared["hyperparameters"] = training_record.get("hyperparameters", config.get("hyperparameters", {}))
    shared["training"] = training or config.get("training", {})
    shared["vla_steer_version"] = vla_steer.__version__
    return canonical_head_config(to_json_safe(shared))
