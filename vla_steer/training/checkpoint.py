"""Checkpoints that resume exactly, written as safetensors + JSON only (nothing that can execute code).

A nested state (dicts, lists, tensors, numbers, strings) is split into a JSON skeleton and a flat dict of
tensors. Directories are written under a temporary name and renamed into place, so a crash mid-write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file


TENSOR_KEY = "__tensor__"


def split_state(tree: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    if isinstance(tree, torch.Tensor):
        name = prefix or "root"
        tensors[name] = tree.detach().cpu().contiguous()
        return {TENSOR_KEY: name}
    if isinstance(tree, dict):
        return {str(k): split_state(v, tensors, f"{prefix}/{k}") for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [split_state(v, tensors, f"{prefix}/{i}") for i, v in enumerate(tree)]
    if isinstance(tree, (np.integer, np.floating)):
        return tree.item()
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot checkpoint a {type(tree).__name__} at {prefix!r}")


def join_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if set(skeleton) == {TENSOR_KEY}:
            return tensors[skeleton[TENSOR_KEY]]
        return {k: join_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [join_state(v, tensors) for v in skeleton]
    return skeleton


def _int_keys(tree: Any) -> Any:
    """JSON turns int dict keys (optimizer ``state``) into strings; turn them back."""
    if isinstance(tree, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_int_keys(v) for v in tree]
    return tree


def save_tree(directory: Path, name: str, tree: Any) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_state(tree, tensors)
    save_file(tensors, directory / f"{name}.safetensors")
    (directory / f"{name}.json").write_text(json.dumps(skeleton))


def load_tree(directory: Path, name: str) -> Any:
    tensors = load_file(directory / f"{name}.safetensors")
    return join_state(json.loads((directory / f"{name}.json").read_text()), tensors)


def load_optimizer_tree(directory: Path, name: str) -> Any:
    return _int_keys(load_tree(directory, name))


def rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].to(torch.uint8))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# -------------------------------------------------------------------------------------------------------------
# resuming
# Recipe fields a resumed run may change: how long it runs, how it is evaluated, logged and checkpointed, where
# files go. Every other field changes the data collected or the networks trained, so a checkpoint refuses it.
RESUMABLE_FIELDS = frozenset({
    "name", "train.total_env_steps", "train.eval_every", "train.eval_episodes", "train.eval_num_envs",
    "train.eval_deterministic", "train.eval_seed", "train.eval_best_of_k", "train.entropy_states",
    "train.entropy_draws", "train.checkpoint_every", "train.log_every", "train.output_dir", "train.resume", "train.log_with",
    "train.torch_threads", "train.cuda_graph_updates", "train.cache_dir", "train.show_progress", "train.record_rollouts",
    "train.publish_every",
    # limits may be tightened (or loosened) between sessions on a robot without starting over
    "safety.action_low", "safety.action_high", "safety.max_action_step", "safety.control_period_s",
    "safety.watchdog_misses", "safety.pace_to_fps",
})


def flatten_recipe(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"section.field": value}`` of a recipe dict (free-form dicts such as ``env.options`` kept whole)."""
    if isinstance(tree, dict) and tree and not prefix.endswith(("options", "kwargs", "rename_map", "adapter_kwargs")):
        return {k: v for key, value in tree.items()
                for k, v in flatten_recipe(value, f"{prefix}.{key}" if prefix else key).items()}
    return {prefix: tree}


def _without_teleop(recipe: dict) -> dict:
    """A robot env's teleoperator (``env.options.teleop``: the person's device, or the scripted person's script) may
    change between sessions, as the person at the robot may: it is not compared on resume."""
    options = (recipe.get("env") or {}).get("options")
    if not isinstance(options, dict) or "teleop" not in options:
        return recipe
    return {**recipe, "env": {**recipe["env"], "options": {k: v for k, v in options.items() if k != "teleop"}}}


def recipe_changes(saved: dict, current: dict) -> list[str]:
    """``field: saved -> current`` for each field that differs between a checkpoint's recipe and the resuming one,
    outside :data:`RESUMABLE_FIELDS` (fields the checkpoint does not record, newer than it, are not compared)."""
    before, after = flatten_recipe(_without_teleop(saved)), flatten_recipe(_without_teleop(current))
    return [f"{key}: {before[key]!r} -> {after.get(key)!r}" for key in sorted(before)
            if key not in RESUMABLE_FIELDS and key in after and before[key] != after[key]]


T = TypeVar("T")


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read back (truncated, garbage, written for other networks)."""


def load_part(directory: Path, files: str, load: Callable[[], T]) -> T:
    """``load()``, with any failure turned into a :class:`CheckpointError` naming the checkpoint's ``files``."""
    try:
        return load()
    except Exception as exc:  # safetensors, JSON, torch's load_state_dict and KeyError all fail differently
        raise CheckpointError(
            f"cannot resume from {directory}: {files} does not load ({type(exc).__name__}: {str(exc)[:300]}). The "
            "checkpoint is damaged or was written by another version; restore it, or start over with "
            "train.resume=false or another train.output_dir") from exc
