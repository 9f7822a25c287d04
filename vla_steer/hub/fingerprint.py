"""A fingerprint of a base policy: which weights and which config a head was trained on.

``base_fingerprint(adapter_or_module)`` hashes, with SHA-256:

* weights: for every entry of the base's ``state_dict`` in sorted name order, its name, dtype and shape, and its
  bytes: all of them for tensors up to 64 KiB, otherwise 64 evenly spaced 1 KiB windows (first and last bytes
  included). That reads at most 64 KiB per tensor, so a 3.5B-parameter pi0 (about 800 tensors) costs ~50 MB of
  hashing instead of 7-14 GB. A change confined to bytes between windows goes unnoticed; a fine-tune, a
  re-initialisation, another checkpoint or another dtype does not. ``full=True`` hashes every byte
  (method ``sha256-full-v1``).
* config: the base config as canonical JSON (sorted keys), without the fields that say where or how a policy is
  run rather than what it computes (device, AMP, hub upload settings, pretrained_path).

The base is fingerprinted *after* its adapter is attached: adapters set inference options on the base config
(DDIM and its step count for DiffusionPolicy, denoising steps for the VLAs), so those options are covered too.
Bytes are read on the tensor's device and only the sampled windows are copied to the CPU.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

SAMPLED = "sha256-sampled-v1"
FULL = "sha256-full-v1"
METHODS = (SAMPLED, FULL)
WINDOW_BYTES, WINDOWS = 1024, 64
SMALL_TENSOR_BYTES = WINDOW_BYTES * WINDOWS
RUNTIME_CONFIG_FIELDS = frozenset({"device", "use_amp", "pretrained_path", "push_to_hub", "repo_id", "private", "tags",
                                   "license"})


def base_parts(base: Any) -> tuple[nn.Module, Any]:
    """(module whose state_dict is the base's weights, its config) for an adapter, a policy or a module."""
    policy = getattr(base, "policy", None)
    if isinstance(policy, nn.Module):  # every adapter over a whole policy keeps it as .policy
        return policy, getattr(policy, "config", None)
    if isinstance(base, nn.Module):
        return base, getattr(base, "config", None)
    # adapters over loose modules (FlowHeadAdapter: velocity field + encoder): every module attribute, by name
    modules = nn.ModuleDict({name: value for name, value in sorted(vars(base).items()) if isinstance(value, nn.Module)})
    if not len(modules):
        raise TypeError(f"cannot fingerprint a {type(base).__name__}: no policy or modules found")
    return modules, None


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (Path, torch.dtype, torch.device)):
        return str(value)
    raise TypeError(f"base config holds a {type(value).__name__}, which has no canonical JSON form")


def config_json(config: Any) -> str:
    """Canonical JSON of a base config (a dataclass such as LeRobot's or vla_steer's, a dict, or None)."""
    if config is None:
        tree: Any = None
    elif dataclasses.is_dataclass(config):
        tree = dataclasses.asdict(config)
    elif isinstance(config, dict):
        tree = dict(config)
    else:
        raise TypeError(f"cannot fingerprint a config of type {type(config).__name__}")
    if isinstance(tree, dict):
        tree = {k: v for k, v in tree.items() if k not in RUNTIME_CONFIG_FIELDS}
    return json.dumps(tree, sort_keys=True, default=_jsonable, separators=(",", ":"))


def _tensor_bytes(tensor: torch.Tensor, full: bool):
    """The bytes hashed for one tensor (see the module doc), as CPU byte strings."""
    flat = tensor.detach().reshape(-1)
    if flat.numel() == 0:
        return
    raw = flat.view(torch.uint8) if flat.dtype != torch.bool else flat.to(torch.uint8)
    n = raw.numel()
    if full or n <= SMALL_TENSOR_BYTES:
        step = 1 << 26  # 64 MiB at a time
        for start in range(0, n, step):
            yield raw[start:start + step].cpu().numpy().tobytes()
        return
    starts = torch.linspace(0, n - WINDOW_BYTES, WINDOWS, dtype=torch.float64).round().long()
    index = (starts[:, None] + torch.arange(WINDOW_BYTES)[None]).reshape(-1).to(raw.device)
    yield raw[index].cpu().numpy().tobytes()


@torch.no_grad()
def base_fingerprint(base: Any, *, full: bool = False) -> dict:
    """``{"method", "weights", "config", "num_tensors", "num_parameters"}`` of an adapter's base (or a module)."""
    module, config = base_parts(base)
    state = module.state_dict()
    weights = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        weights.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        for chunk in _tensor_bytes(tensor, full):
            weights.update(chunk)
    return {
        "method": FULL if full else SAMPLED,
        "weights": weights.hexdigest(),
        "config": hashlib.sha256(config_json(config).encode()).hexdigest(),
        "num_tensors": len(state),
        "num_parameters": int(sum(t.numel() for t in state.values())),
    }


BASE_TAG_PREFIX = "vla-steer-base-"


def base_tag(fingerprint: dict) -> str:
    """The Hub tag a shared head carries for its base: ``vla-steer-base-`` + the first 16 hex digits of the weights
    digest. Only the weights: adapter options (denoising steps) change the config digest, yet a head for the same
    checkpoint is what someone searching by base wants to see (``vla-steer search`` then says whether the options
    match too). A tag is an index anyone can set, never a proof: search checks each head's recorded fingerprint."""
    return f"{BASE_TAG_PREFIX}{fingerprint['weights'][:16]}"


def compare_fingerprints(recorded: dict, actual: dict) -> list[str]:
    """What differs between a recorded fingerprint and the base's (empty when they match)."""
    problems = []
    if recorded["num_tensors"] != actual["num_tensors"] or recorded["num_parameters"] != actual["num_parameters"]:
        problems.append(f"the head's base has {recorded['num_tensors']} tensors / {recorded['num_parameters']} "
                        f"parameters, this one {actual['num_tensors']} / {actual['num_parameters']}")
    if recorded["weights"] != actual["weights"]:
        problems.append(f"weights differ ({recorded['method']} {recorded['weights'][:12]} vs {actual['weights'][:12]})")
    if recorded["config"] != actual["config"]:
        problems.append(f"config differs (sha256 {recorded['config'][:12]} vs {actual['config'][:12]}; adapter "
                        "options such as the number of denoising steps are part of it)")
    return problems
